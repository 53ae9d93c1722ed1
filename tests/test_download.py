"""`weights.download`: the files each model/variant needs, the layout it writes, SHA-256 checks, offline errors."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from seedvr_local.weights import download as download_module
from seedvr_local.weights.bundle import inspect_weights_dir
from seedvr_local.cli import main
from seedvr_local.model_home import DOWNLOADABLE_MODELS
from seedvr_local.weights.download import DownloadError, download, published_variants, remote_files


def _content(repo_id: str, filename: str) -> bytes:
    return f"{repo_id}/{filename}".encode()


class FakeHub:
    """Stands in for huggingface_hub.hf_hub_download: writes a small file where the real one would."""

    def __init__(self):
        self.calls: list[tuple[str, str, str | None]] = []
        self.forced: list[str] = []

    def __call__(self, repo_id, filename, *, revision=None, local_dir=None, force_download=False, **kwargs):
        self.calls.append((repo_id, filename, revision))
        if force_download:
            self.forced.append(filename)
        path = Path(local_dir) / filename
        path.write_bytes(_content(repo_id, filename))
        return str(path)


@pytest.fixture
def hub(monkeypatch):
    import huggingface_hub

    fake = FakeHub()
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    # Digests of the fake contents, so that the checks pass for the files that have a known digest.
    known = {
        file.filename: hashlib.sha256(_content(file.repo_id, file.filename)).hexdigest()
        for model in DOWNLOADABLE_MODELS
        for variant in published_variants(model)
        for file in remote_files(model, variant)
        if file.filename in download_module.SHA256
    }
    monkeypatch.setattr(download_module, "SHA256", known)
    return fake


@pytest.mark.parametrize(
    "model, variant, dit, vae, dit_repo",
    [
        ("3b", "official", "seedvr2_ema_3b.pth", "ema_vae.pth", "ByteDance-Seed/SeedVR2-3B"),
        ("7b", "official", "seedvr2_ema_7b.pth", "ema_vae.pth", "ByteDance-Seed/SeedVR2-7B"),
        ("3b", "fp16", "seedvr2_ema_3b_fp16.safetensors", "ema_vae_fp16.safetensors", "numz/SeedVR2_comfyUI"),
        ("7b", "fp16", "seedvr2_ema_7b_fp16.safetensors", "ema_vae_fp16.safetensors", "numz/SeedVR2_comfyUI"),
        ("3b", "fp8", "seedvr2_ema_3b_fp8_e4m3fn.safetensors", "ema_vae_fp16.safetensors", "numz/SeedVR2_comfyUI"),
        ("7b", "fp8", "seedvr2_ema_7b_fp8_e4m3fn_mixed_block35_fp16.safetensors", "ema_vae_fp16.safetensors",
         "AInVFX/SeedVR2_comfyUI"),
        ("3b", "Q8_0", "seedvr2_ema_3b-Q8_0.gguf", "ema_vae_fp16.safetensors", "AInVFX/SeedVR2_comfyUI"),
        ("3b", "Q4_K_M", "seedvr2_ema_3b-Q4_K_M.gguf", "ema_vae_fp16.safetensors", "AInVFX/SeedVR2_comfyUI"),
        ("7b", "Q4_K_M", "seedvr2_ema_7b-Q4_K_M.gguf", "ema_vae_fp16.safetensors", "AInVFX/SeedVR2_comfyUI"),
        ("7b-sharp", "official", "seedvr2_ema_7b_sharp.pth", "ema_vae.pth", "ByteDance-Seed/SeedVR2-7B"),
        ("7b-sharp", "fp16", "seedvr2_ema_7b_sharp_fp16.safetensors", "ema_vae_fp16.safetensors",
         "numz/SeedVR2_comfyUI"),
        ("7b-sharp", "Q4_K_M", "seedvr2_ema_7b_sharp-Q4_K_M.gguf", "ema_vae_fp16.safetensors",
         "AInVFX/SeedVR2_comfyUI"),
    ],
)
def test_download_writes_a_complete_weights_directory(tmp_path, hub, model, variant, dit, vae, dit_repo):
    dest = download(model, variant, tmp_path / "w", progress=False)
    assert dest == tmp_path / "w"
    assert sorted(p.name for p in dest.iterdir() if p.is_file()) == sorted([dit, vae, "pos_emb.pt", "neg_emb.pt"])
    assert (dit_repo, dit) in [(repo, name) for repo, name, _ in hub.calls]
    embeddings = {(repo, name) for repo, name, _ in hub.calls if name.endswith("_emb.pt")}
    assert embeddings == {("ByteDance-Seed/SeedVR2-3B", "pos_emb.pt"), ("ByteDance-Seed/SeedVR2-3B", "neg_emb.pt")}
    info = inspect_weights_dir(dest)
    assert (info.variant, info.dit_path.name, info.vae_path.name) == (model.removesuffix("-sharp"), dit, vae)
    assert info.sharp == model.endswith("-sharp")


def test_the_pinned_digests_are_the_published_ones():
    digests = download_module.SHA256
    assert digests["pos_emb.pt"] == "fa07a14844314772266b66c3b95deb0027696d8fe7065721263db5176f45d799"
    assert digests["neg_emb.pt"] == "6a43e5800ef2354f1c156d27535834da055cbec8248298b8923492bba2076581"
    assert digests["ema_vae_fp16.safetensors"].startswith("20678548")  # the prefix the spec quotes
    assert "seedvr2_ema_3b.pth" not in digests  # no published digest: not invented
    # The GGUF files' digests as the numz node's registry publishes them (src/utils/model_registry.py, d38dc21).
    assert digests["seedvr2_ema_3b-Q4_K_M.gguf"].startswith("e665e390")
    assert digests["seedvr2_ema_7b_sharp-Q4_K_M.gguf"].startswith("7aed800a")


def test_a_corrupt_file_is_detected_with_both_digests(tmp_path, hub, monkeypatch):
    wrong = "0" * 64
    monkeypatch.setitem(download_module.SHA256, "pos_emb.pt", wrong)
    with pytest.raises(DownloadError) as info:
        download("3b", "official", tmp_path, progress=False)
    actual = hashlib.sha256(_content("ByteDance-Seed/SeedVR2-3B", "pos_emb.pt")).hexdigest()
    message = str(info.value)
    assert "\n" not in message and "pos_emb.pt" in message and wrong in message and actual in message


def test_verified_files_already_there_are_not_fetched_again(tmp_path, hub):
    download("3b", "fp16", tmp_path, progress=False)
    first = len(hub.calls)
    download("3b", "fp16", tmp_path, progress=False)
    assert len(hub.calls) == first  # every fp16 file has a digest, so nothing is fetched again
    (tmp_path / "pos_emb.pt").write_bytes(b"truncated")
    download("3b", "fp16", tmp_path, progress=False)
    assert [name for _, name, _ in hub.calls[first:]] == ["pos_emb.pt"] and hub.forced == ["pos_emb.pt"]


def test_hub_errors_become_one_line_download_errors(tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def unreachable(repo_id, filename, **kwargs):
        raise LocalEntryNotFoundError("Cannot find the requested files in the disk cache\nand outgoing traffic ...")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", unreachable)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    with pytest.raises(DownloadError) as info:
        download("7b", "official", tmp_path / "w", progress=False)
    message = str(info.value)
    assert "\n" not in message and "offline" in message
    assert "https://huggingface.co/ByteDance-Seed/SeedVR2-7B" in message and "seedvr2_ema_7b.pth" in message
    assert "pos_emb.pt" in message and str(tmp_path / "w") in message


def test_offline_fails_fast_in_one_line(tmp_path, monkeypatch, network_attempts):
    """Fast: offline, it does not even try the network (tests/conftest.py records every attempt)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DownloadError) as info:
        download("3b", "official", tmp_path / "w", progress=False)
    assert network_attempts == []
    message = str(info.value)
    assert "\n" not in message and "HF_HUB_OFFLINE" in message
    for part in ("seedvr2_ema_3b.pth", "ema_vae.pth", "pos_emb.pt", "neg_emb.pt",
                 "https://huggingface.co/ByteDance-Seed/SeedVR2-3B", str(tmp_path / "w")):
        assert part in message, message


def test_bad_arguments():
    with pytest.raises(ValueError, match="model must be"):
        remote_files("13b")
    with pytest.raises(ValueError, match="variant must be"):
        remote_files("3b", "int4")


def test_a_variant_that_is_not_published_is_one_clear_error(capsys, tmp_path):
    assert "Q8_0" not in published_variants("7b")
    with pytest.raises(ValueError, match=r"SeedVR2 7B is not published as Q8_0; its variants: official, fp16, fp8"):
        remote_files("7b", "Q8_0")
    assert main(["download", "--model", "7b", "--variant", "Q8_0", "--dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not published as Q8_0" in err[0]


def test_offline_gguf_download_is_the_same_one_line_error(tmp_path, monkeypatch, network_attempts, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = main(["download", "--model", "7b-sharp", "--variant", "Q4_K_M", "--dir", str(tmp_path / "w")])
    assert code == 2 and network_attempts == []
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "offline (HF_HUB_OFFLINE is set)" in err[0]
    for part in ("seedvr2_ema_7b_sharp-Q4_K_M.gguf", "https://huggingface.co/AInVFX/SeedVR2_comfyUI",
                 "ema_vae_fp16.safetensors", str(tmp_path / "w")):  # fmt: skip
        assert part in err[0], err[0]
