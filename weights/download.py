"""Download SeedVR2 weights from Hugging Face into a weights directory (see weights/bundle.py for the layout).

Sources (pinned repo ids):

- official: the fp32 ``.pth`` files of ``ByteDance-Seed/SeedVR2-3B`` / ``ByteDance-Seed/SeedVR2-7B``
  (DiT and ``ema_vae.pth``; the 7B repo also holds the "sharp" DiT);
- fp16: ``numz/SeedVR2_comfyUI`` (``seedvr2_ema_{3b,7b,7b_sharp}_fp16.safetensors``, ``ema_vae_fp16.safetensors``);
- fp8: ``seedvr2_ema_3b_fp8_e4m3fn.safetensors`` from ``numz/SeedVR2_comfyUI``; for the 7B models the
  ``..._fp8_e4m3fn_mixed_block35_fp16`` conversions from ``AInVFX/SeedVR2_comfyUI`` (plain 7B fp8 shows
  artifacts that keeping the last block in fp16 fixes; spec section 6, pitfall 2), with the fp16 VAE;
- Q8_0, Q4_K_M: the GGUF conversions ``seedvr2_ema_{3b,7b,7b_sharp}-<type>.gguf`` from ``AInVFX/SeedVR2_comfyUI``
  (mirrored from ``cmeka/SeedVR2-GGUF``), with the fp16 VAE. Q8_0 is published for the 3B only.

Every variant also gets ``pos_emb.pt`` and ``neg_emb.pt`` from ``ByteDance-Seed/SeedVR2-3B`` (the same text
embeddings serve both models), so the result is a complete weights directory.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from seedvr_local.model_home import DOWNLOADABLE_MODELS as MODELS, VARIANTS

OFFICIAL_REPOS = {
    "3b": "ByteDance-Seed/SeedVR2-3B",
    "7b": "ByteDance-Seed/SeedVR2-7B",
    "7b-sharp": "ByteDance-Seed/SeedVR2-7B",  # the official 7B repo holds both 7B checkpoints
}
CONVERTED_REPO = "numz/SeedVR2_comfyUI"
MIXED_FP8_REPO = "AInVFX/SeedVR2_comfyUI"

#: Git revisions of the repos. No commit hash of these repos is known to us, so files come from the main
#: branch (revision None); pin one here once it is known.
REVISIONS: dict[str, str | None] = {
    OFFICIAL_REPOS["3b"]: None,
    OFFICIAL_REPOS["7b"]: None,
    CONVERTED_REPO: None,
    MIXED_FP8_REPO: None,
}

#: Known SHA-256 digests. The text embeddings' are quoted by the reference data's README; the conversions' are
#: the ones the numz ComfyUI node publishes for these files (src/utils/model_registry.py, commit d38dc21).
#: Files that registry lists without a digest have none here.
#: The official .pth files have no published digest, so they are not checked.
SHA256 = {
    "pos_emb.pt": "fa07a14844314772266b66c3b95deb0027696d8fe7065721263db5176f45d799",
    "neg_emb.pt": "6a43e5800ef2354f1c156d27535834da055cbec8248298b8923492bba2076581",
    "seedvr2_ema_3b_fp16.safetensors": "2fd0e03a3dad24e07086750360727ca437de4ecd456f769856e960ae93e2b304",
    "seedvr2_ema_3b_fp8_e4m3fn.safetensors": "3bf1e43ebedd570e7e7a0b1b60d6a02e105978f505c8128a241cde99a8240cff",
    "seedvr2_ema_7b_fp16.safetensors": "7b8241aa957606ab6cfb66edabc96d43234f9819c5392b44d2492d9f0b0bbe4a",
    "seedvr2_ema_7b_fp8_e4m3fn_mixed_block35_fp16.safetensors": (
        "3d68b5ec0b295ae28092e355c8cad870edd00b817b26587d0cb8f9dd2df19bb2"
    ),
    "ema_vae_fp16.safetensors": "20678548f420d98d26f11442d3528f8b8c94e57ee046ef93dbb7633da8612ca1",
    "seedvr2_ema_7b_sharp_fp16.safetensors": "20a93e01ff24beaeebc5de4e4e5be924359606c356c9c51509fba245bd2d77dd",
    "seedvr2_ema_7b_sharp_fp8_e4m3fn_mixed_block35_fp16.safetensors": (
        "0d2c5b8be0fda94351149c5115da26aef4f4932a7a2a928c6f184dda9186e0be"
    ),
    "seedvr2_ema_3b-Q4_K_M.gguf": "e665e3909de1a8c88a69c609bca9d43ff5a134647face2ce4497640cc3597f0e",
    "seedvr2_ema_3b-Q8_0.gguf": "be0d60083a2051a265eb4b77f28edf494e6db67ffc250216f32b72292e5cbd96",
    "seedvr2_ema_7b-Q4_K_M.gguf": "db9cb2ad90ebd40d2e8c29da2b3fc6fd03ba87cd58cbadceccca13ad27162789",
    "seedvr2_ema_7b_sharp-Q4_K_M.gguf": "7aed800ac4eb8e0d18569a954c0ff35f5a1caa3ed5d920e66cc31405f75b6e69",
}

#: (model, variant) -> the repo and file name of its DiT; the official files are named after the model.
_CONVERTED_DITS: dict[tuple[str, str], tuple[str, str]] = {
    ("3b", "fp16"): (CONVERTED_REPO, "seedvr2_ema_3b_fp16.safetensors"),
    ("7b", "fp16"): (CONVERTED_REPO, "seedvr2_ema_7b_fp16.safetensors"),
    ("7b-sharp", "fp16"): (CONVERTED_REPO, "seedvr2_ema_7b_sharp_fp16.safetensors"),
    ("3b", "fp8"): (CONVERTED_REPO, "seedvr2_ema_3b_fp8_e4m3fn.safetensors"),
    ("7b", "fp8"): (MIXED_FP8_REPO, "seedvr2_ema_7b_fp8_e4m3fn_mixed_block35_fp16.safetensors"),
    ("7b-sharp", "fp8"): (MIXED_FP8_REPO, "seedvr2_ema_7b_sharp_fp8_e4m3fn_mixed_block35_fp16.safetensors"),
    ("3b", "Q8_0"): (MIXED_FP8_REPO, "seedvr2_ema_3b-Q8_0.gguf"),
    ("3b", "Q4_K_M"): (MIXED_FP8_REPO, "seedvr2_ema_3b-Q4_K_M.gguf"),
    ("7b", "Q4_K_M"): (MIXED_FP8_REPO, "seedvr2_ema_7b-Q4_K_M.gguf"),
    ("7b-sharp", "Q4_K_M"): (MIXED_FP8_REPO, "seedvr2_ema_7b_sharp-Q4_K_M.gguf"),
}


class DownloadError(RuntimeError):
    """A download that failed or produced a corrupt file; the message says what to fetch and where to put it."""


@dataclass(frozen=True)
class RemoteFile:
    repo_id: str
    filename: str

    @property
    def revision(self) -> str | None:
        return REVISIONS.get(self.repo_id)

    @property
    def sha256(self) -> str | None:
        return SHA256.get(self.filename)

    @property
    def url(self) -> str:
        return f"https://huggingface.co/{self.repo_id}/resolve/{self.revision or 'main'}/{self.filename}"


def published_variants(model: str) -> tuple[str, ...]:
    """The variants `model` can be downloaded in, most precise first."""
    return tuple(v for v in VARIANTS if v == "official" or (model, v) in _CONVERTED_DITS)


def remote_files(model: str, variant: str = "official") -> list[RemoteFile]:
    """The files a complete weights directory of `model` ("3b", "7b", "7b-sharp") in `variant` needs, in
    download order."""
    if model not in MODELS:
        raise ValueError(f"model must be one of {', '.join(MODELS)}, got {model!r}")
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    if variant not in published_variants(model):
        raise ValueError(f"SeedVR2 {model.upper()} is not published as {variant}; its variants: "
                         f"{', '.join(published_variants(model))}")  # fmt: skip
    official = OFFICIAL_REPOS[model]
    if variant == "official":
        dit_name = f"seedvr2_ema_{model.replace('-', '_')}.pth"
        files = [RemoteFile(official, dit_name), RemoteFile(official, "ema_vae.pth")]
    else:
        dit = RemoteFile(*_CONVERTED_DITS[model, variant])
        files = [dit, RemoteFile(CONVERTED_REPO, "ema_vae_fp16.safetensors")]
    embeddings_repo = OFFICIAL_REPOS["3b"]
    return files + [RemoteFile(embeddings_repo, "pos_emb.pt"), RemoteFile(embeddings_repo, "neg_emb.pt")]


def download(model: str, variant: str, dest: str | Path, *, progress: bool = True) -> Path:
    """Fetch a complete weights directory into `dest` and return it; files already there are reused.

    Files with a known SHA-256 are checked (a mismatch raises DownloadError with both digests). Offline
    (`HF_HUB_OFFLINE=1`, no network, a missing repo or file) it raises DownloadError in one line naming the
    files to fetch by hand and where to put them.
    """
    files = remote_files(model, variant)
    dest = Path(dest).expanduser()
    label = f"SeedVR2 {model.upper()} ({variant})"
    if _offline():
        absent = [file for file in files if not (dest / file.filename).is_file()]
        if absent:
            hint = _manual_hint(absent, dest)
            raise DownloadError(f"cannot download {label}: offline (HF_HUB_OFFLINE is set); {hint}")
    dest.mkdir(parents=True, exist_ok=True)
    with _progress_bars(progress):
        for file in files:
            _ensure(file, dest, label, files)
    return dest


def _ensure(file: RemoteFile, dest: Path, label: str, all_files: list[RemoteFile]) -> None:
    path = dest / file.filename
    stale = False
    if path.is_file():
        if file.sha256 is None:
            if _offline():
                return  # nothing to check it against, and no way to refresh it
        else:
            actual = sha256_of(path)
            if actual == file.sha256:
                return
            if _offline():
                raise DownloadError(_mismatch_message(path, actual, file.sha256))
            stale = True  # a partial or damaged copy: fetch it again, whatever the hub's metadata says
    verify_sha256(_fetch(file, dest, label, all_files, force=stale), file.sha256)


def verify_sha256(path: str | Path, expected: str | None) -> None:
    """Raise DownloadError if `path`'s SHA-256 is not `expected` (None: nothing to check)."""
    if expected is None:
        return
    actual = sha256_of(path)
    if actual != expected.lower():
        raise DownloadError(_mismatch_message(path, actual, expected))


def _mismatch_message(path: str | Path, actual: str, expected: str) -> str:
    return f"{path} is corrupt: its SHA-256 is {actual}, expected {expected}; delete it and download again"


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(16 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch(file: RemoteFile, dest: Path, label: str, all_files: list[RemoteFile], force: bool = False) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError

    try:
        fetched = hf_hub_download(
            file.repo_id, file.filename, revision=file.revision, local_dir=dest, force_download=force
        )
    except GatedRepoError:
        reason = f"{file.repo_id} needs you to accept its terms on Hugging Face and log in (hf auth login)"
    except LocalEntryNotFoundError:
        reason = "offline (no connection to huggingface.co)"
    except (OSError, ValueError) as exc:  # huggingface_hub's HTTP and network errors are OSErrors
        reason = f"{file.filename}: {_first_line(exc)}"
    else:
        target = dest / file.filename
        if Path(fetched).resolve() != target.resolve():  # keep the flat layout whatever the hub did
            os.replace(fetched, target)
        return target
    absent = [other for other in all_files if not (dest / other.filename).is_file()]
    raise DownloadError(f"cannot download {label}: {reason}; {_manual_hint(absent, dest)}")


def _manual_hint(files: list[RemoteFile], dest: Path) -> str:
    by_repo: dict[str, list[str]] = {}
    for file in files:
        by_repo.setdefault(file.repo_id, []).append(file.filename)
    sources = "; ".join(f"{', '.join(names)} from https://huggingface.co/{repo}" for repo, names in by_repo.items())
    return f"fetch {sources} and put them in {dest}"


def _offline() -> bool:
    from huggingface_hub import constants

    # huggingface_hub reads HF_HUB_OFFLINE once at import; read it again so a later setting counts.
    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    return constants.HF_HUB_OFFLINE or flag in ("1", "true", "yes", "on")


@contextmanager
def _progress_bars(enabled: bool) -> Iterator[None]:
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_disabled = are_progress_bars_disabled()
    if not enabled and not was_disabled:
        disable_progress_bars()
    try:
        yield
    finally:
        if not enabled and not was_disabled:
            enable_progress_bars()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
