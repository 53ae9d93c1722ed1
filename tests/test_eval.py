"""`seedvr-local eval`: metrics against scikit-image, runs on each dataset layout with the tiny model, resuming,
offline metrics, the HTML report in a real browser, and one-line errors."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from seedvr_local.cli import main
from seedvr_local.evaluation import metrics
from tests import requires

skimage_metrics = requires.module("skimage.metrics", "pip install -e '.[test]'")
skimage_color = requires.module("skimage.color", "pip install -e '.[test]'")

#: A stand-in for another upscaler: Pillow's bicubic resize by 4, and a line per call in $LOG when set.
RESIZER = (
    "import os, sys\n"
    "from PIL import Image\n"
    "source, target = sys.argv[1], sys.argv[2]\n"
    "if os.environ.get('EVAL_LOG'):\n"
    "    open(os.environ['EVAL_LOG'], 'a').write(os.path.basename(source) + '\\n')\n"
    "if os.path.exists(os.environ.get('EVAL_FAIL', '/nonexistent')) and 'b.' in os.path.basename(source):\n"
    "    sys.exit('refusing b on purpose')\n"
    "image = Image.open(source)\n"
    "image.resize((image.width * 4, image.height * 4), Image.BICUBIC).save(target)\n"
)


def _picture(seed: int, width: int, height: int) -> np.ndarray:
    """Smooth gradients with texture: PSNR and SSIM away from their limits."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], axis=-1)
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


def _save(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def _y(pixels: np.ndarray) -> np.ndarray:
    return skimage_color.rgb2ycbcr(pixels)[..., 0]


def _skimage_psnr_y(output: np.ndarray, reference: np.ndarray, crop: int) -> float:
    a, b = _y(output)[crop:-crop, crop:-crop], _y(reference)[crop:-crop, crop:-crop]
    return skimage_metrics.peak_signal_noise_ratio(b, a, data_range=255)


def _eval(*argv: str) -> int:
    return main(["eval", *argv])


def _report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def test_psnr_and_ssim_match_scikit_image():
    output, reference = _picture(1, 61, 47), _picture(2, 61, 47)
    crop = 4
    assert metrics.psnr(output, reference, crop) == pytest.approx(_skimage_psnr_y(output, reference, crop), abs=1e-3)
    a, b = _y(output)[crop:-crop, crop:-crop], _y(reference)[crop:-crop, crop:-crop]
    expected = skimage_metrics.structural_similarity(
        b, a, data_range=255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    assert metrics.ssim(output, reference, crop) == pytest.approx(expected, abs=1e-3)

    rgb_psnr = skimage_metrics.peak_signal_noise_ratio(reference, output, data_range=255)
    assert metrics.psnr(output, reference, 0, y_only=False) == pytest.approx(rgb_psnr, abs=1e-3)
    rgb_ssim = skimage_metrics.structural_similarity(
        reference.astype(np.float64), output.astype(np.float64), data_range=255, gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False, channel_axis=-1,
    )
    assert metrics.ssim(output, reference, 0, y_only=False) == pytest.approx(rgb_ssim, abs=1e-3)
    assert metrics.ssim(reference, reference, crop) == pytest.approx(1.0)


def test_an_hr_only_bicubic_baseline_scores_what_the_test_computes(tmp_path, capsys):
    """The degradation (bicubic /4), the baseline (bicubic x4) and PSNR redone here with Pillow and scikit-image."""
    hr = {name: _picture(seed, 50, 38) for seed, name in enumerate(("a", "b"))}  # 50x38: cropped to 48x36
    for name, pixels in hr.items():
        _save(tmp_path / "set" / "HR" / f"{name}.png", pixels)
    out = tmp_path / "run"
    assert _eval(str(tmp_path / "set"), "--out", str(out), "--no-model", "--baseline", "bicubic",
                 "--metrics", "psnr,ssim") == 0
    report = _report(out)
    for name, pixels in hr.items():
        reference = pixels[:36, :48]
        lr = Image.fromarray(reference).resize((12, 9), Image.BICUBIC)
        restored = np.asarray(lr.resize((48, 36), Image.BICUBIC))
        measured = report["methods"]["bicubic"]["per_item"][name]["psnr"]
        assert measured == pytest.approx(_skimage_psnr_y(restored, reference, 4), abs=1e-6)
        with Image.open(out / "outputs" / "bicubic" / f"{name}.png") as saved:
            assert np.array_equal(np.asarray(saved), restored)
    assert report["dataset"]["layout"] == "hr_only"
    assert report["dataset"]["degradation"]["scale"] == 4
    assert set(report["dataset"]["files"]) == {"HR/a.png", "HR/b.png"}
    assert "| bicubic |" in (out / "report.md").read_text()


def test_a_paired_run_with_the_model_a_baseline_and_a_command(tmp_path, capsys):
    for seed, name in enumerate(("a", "b")):
        hr = _picture(seed, 48, 32)
        _save(tmp_path / "set" / "HR" / f"{name}.png", hr)
        _save(tmp_path / "set" / "LR" / f"{name}.png", np.asarray(Image.fromarray(hr).resize((12, 8), Image.BICUBIC)))
    script = _save_script(tmp_path)
    out = tmp_path / "run"
    code = _eval(str(tmp_path / "set"), "--out", str(out), "--model", "tiny", "--device", "cpu", "--seed", "5",
                 "--metrics", "psnr,ssim,psnr_rgb", "--baseline", "bicubic",
                 "--compare", f"pillow={shlex.quote(sys.executable)} {script} {{in}} {{out}}")
    assert code == 0, capsys.readouterr().err
    report = _report(out)
    assert list(report["methods"]) == ["seedvr2", "bicubic", "pillow"]
    model = report["methods"]["seedvr2"]
    assert model["weights_format"].startswith("random") and model["device"] == "cpu" and model["dtype"] == "float32"
    assert set(model["per_item"]) == {"a", "b"} and model["seconds_per_item"] > 0
    # fal's price: $0.001 per output megapixel, 48x32 each
    assert model["fal_price_usd_per_item"] == pytest.approx(48 * 32 / 1e6 * 0.001)
    assert model["output_megapixels_per_second"] == pytest.approx(48 * 32 / 1e6 / model["seconds_per_item"])
    # the command resizes as the bicubic baseline does: same pixels, same scores
    assert report["methods"]["pillow"]["per_item"] == report["methods"]["bicubic"]["per_item"]
    for method in ("seedvr2", "bicubic", "pillow"):
        with Image.open(out / "outputs" / method / "a.png") as saved:
            assert saved.size == (48, 32)
    md = (out / "report.md").read_text()
    assert re.search(r"\| bicubic \| \*\*[0-9.]+\*\* \|", md)  # the best PSNR in bold
    rows = (out / "report.csv").read_text().splitlines()
    assert rows[0].startswith("method,item,psnr,ssim,psnr_rgb") and len(rows) == 1 + 3 * 3
    assert report["run"]["seed"] == 5 and report["environment"]["packages"]["numpy"]


def _save_script(tmp_path: Path) -> Path:
    script = tmp_path / "resize.py"
    script.write_text(RESIZER)
    return script


def test_an_hr_only_run_records_its_degradation_and_makes_the_same_inputs_again(tmp_path):
    _save(tmp_path / "set" / "HR" / "a.png", _picture(3, 32, 32))
    argv = ["--model", "tiny", "--device", "cpu", "--metrics", "psnr", "--seed", "2", "--scale", "2",
            "--degrade-blur", "0.8", "--degrade-noise", "5", "--degrade-jpeg", "70"]
    assert _eval(str(tmp_path / "set"), "--out", str(tmp_path / "one"), *argv) == 0
    assert _eval(str(tmp_path / "set"), "--out", str(tmp_path / "two"), *argv) == 0
    degradation = _report(tmp_path / "one")["dataset"]["degradation"]
    assert degradation == {"downscale": "bicubic (Pillow)", "scale": 2, "blur_sigma": 0.8, "noise_sigma": 5.0,
                           "jpeg_quality": 70, "seed": 2}
    first, second = (np.asarray(Image.open(tmp_path / run / "inputs" / "a.png")) for run in ("one", "two"))
    assert first.shape == (16, 16, 3) and np.array_equal(first, second)
    clean = np.asarray(Image.fromarray(_picture(3, 32, 32)).resize((16, 16), Image.BICUBIC))
    assert np.abs(first.astype(int) - clean).mean() > 1  # noise and JPEG were applied
    with Image.open(tmp_path / "one" / "outputs" / "seedvr2" / "a.png") as saved:
        assert saved.size == (32, 32)


def test_a_video_run_measures_frames_and_sequences(tmp_path, capsys):
    frames = [_picture(10 + k, 24, 16) for k in range(5)]
    for k, frame in enumerate(frames):
        _save(tmp_path / "set" / "HR" / "seq" / f"{k:03d}.png", frame)
    out = tmp_path / "run"
    code = _eval(str(tmp_path / "set"), "--out", str(out), "--model", "tiny", "--device", "cpu", "--seed", "1",
                 "--scale", "2", "--baseline", "bicubic", "--metrics", "psnr,tdiff", "--clip-frames", "5")
    assert code == 0, capsys.readouterr().err
    report = _report(out)
    for method in ("seedvr2", "bicubic"):
        written = sorted((out / "outputs" / method / "seq").iterdir())
        assert len(written) == 5
        outputs = [np.asarray(Image.open(p)) for p in written]
        assert outputs[0].shape == (16, 24, 3)
        per_frame = report["methods"][method]["per_frame"]["seq"]["psnr"]
        assert per_frame == pytest.approx([_skimage_psnr_y(o, f, 2) for o, f in zip(outputs, frames)], abs=1e-3)
        # tdiff redone here: mean |change of the output - change of the reference| on the luma
        expected = np.mean([np.abs((_y(outputs[k + 1]) - _y(outputs[k])) - (_y(frames[k + 1]) - _y(frames[k]))).mean()
                            for k in range(4)])
        assert report["methods"][method]["per_item"]["seq"]["tdiff"] == pytest.approx(expected, abs=1e-3)
    assert report["dataset"]["kinds"] == ["video"]
    # the model's price is per frame: 5 frames of 24x16
    assert report["methods"]["seedvr2"]["fal_price_usd_total"] == pytest.approx(5 * 24 * 16 / 1e6 * 0.001)


def test_an_interrupted_run_resumes_without_redoing_items(tmp_path, capsys, monkeypatch):
    for seed, name in enumerate(("a", "b", "c")):
        _save(tmp_path / "set" / f"{name}.png", _picture(seed, 12, 8))  # no HR: no-reference set
    script = _save_script(tmp_path)
    log, fail = tmp_path / "calls.log", tmp_path / "fail-b"
    monkeypatch.setenv("EVAL_LOG", str(log))
    monkeypatch.setenv("EVAL_FAIL", str(fail))
    fail.touch()
    argv = [str(tmp_path / "set"), "--out", str(tmp_path / "run"), "--no-model", "--metrics", "psnr",
            "--baseline", "bicubic", "--compare", f"cmd={shlex.quote(sys.executable)} {script} {{in}} {{out}}"]
    assert _eval(*argv) == 2
    err = capsys.readouterr().err
    assert "cmd b: failed: the command exited with status 1: refusing b on purpose" in err
    assert err.strip().splitlines()[-1] == (
        "seedvr-local: error: 1 item(s) failed (see the report); rerun the same command to retry them")
    done = {p: p.stat().st_mtime_ns for p in (tmp_path / "run" / "items").rglob("[!_]*.json")}
    assert len(done) == 5  # a, b by bicubic; a, c by the command; not b, which failed
    assert sorted(log.read_text().split()) == ["a.png", "b.png", "c.png"]

    fail.unlink()
    assert _eval(*argv) == 0
    assert sorted(log.read_text().split()) == ["a.png", "b.png", "b.png", "c.png"]  # only b again
    assert all(path.stat().st_mtime_ns == mtime for path, mtime in done.items())
    report = _report(tmp_path / "run")
    assert report["methods"]["cmd"]["items_done"] == 3 and report["methods"]["cmd"]["failed"] == {}


def test_a_pretrained_metric_without_weights_is_skipped_in_one_line(tmp_path, capsys):
    _save(tmp_path / "set" / "HR" / "a.png", _picture(0, 32, 32))
    weights = tmp_path / "no-weights"
    weights.mkdir()
    out = tmp_path / "run"
    assert _eval(str(tmp_path / "set"), "--out", str(out), "--no-model", "--baseline", "bicubic",
                 "--metrics", "psnr,lpips", "--metric-weights", str(weights)) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "lpips" in line]
    assert len(lines) == 1 and lines[0].startswith("skipped metric lpips: "), lines
    report = _report(out)
    assert "lpips" in report["run"]["skipped_metrics"] and "psnr" in report["methods"]["bicubic"]["mean"]
    assert "Not measured: lpips" in (out / "report.md").read_text()


def test_the_offline_guard_refuses_downloads_through_torch_hub(tmp_path):
    """What keeps pyiqa (where installed) from fetching weights: torch.hub's downloads raise before any request."""
    import torch.hub

    with metrics._offline(tmp_path):
        with pytest.raises(metrics._NotOnDisk, match="not on disk"):
            torch.hub.load_state_dict_from_url("https://example.invalid/weights.pth", model_dir=str(tmp_path))
        assert torch.hub.get_dir() == str(tmp_path / "hub")
    assert torch.hub.download_url_to_file.__name__ == "download_url_to_file"


def _chromium() -> str:
    import shutil

    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        requires.missing("chromium", "apt-get install chromium")
    return path


def test_the_html_report_renders_offline_with_its_images(tmp_path):
    for seed, name in enumerate(("a", "b")):
        hr = _picture(seed, 48, 32)
        _save(tmp_path / "set" / "HR" / f"{name}.png", hr)
    out = tmp_path / "run"
    assert _eval(str(tmp_path / "set"), "--out", str(out), "--no-model", "--metrics", "psnr,ssim",
                 "--baseline", "bicubic,lanczos") == 0
    page = (out / "report.html").read_text()
    # no address outside the page: no URL, every src a data URI, no CSS import
    assert not re.search(r"https?:", page, re.I) and not re.search(r'(src|href)="(?!data:)', page)
    assert "url(" not in page and "@import" not in page
    assert "default-src 'none'" in page and page.count("<svg") == 4
    # A copy with a probe: the title lists every image's decoded width once the page's own script has run.
    probe = page.replace("</body>", "<script>addEventListener('load', () => { document.title = 'widths:' + "
                                    "[...document.images].map(i => i.naturalWidth).join(','); });</script></body>")
    (out / "probe.html").write_text(probe)
    base = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
            "--host-resolver-rules=MAP * ~NOTFOUND", "--virtual-time-budget=5000"]
    done = subprocess.run([*base, "--dump-dom", (out / "probe.html").as_uri()], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    widths = re.search(r"<title>widths:([0-9,]*)</title>", done.stdout).group(1).split(",")
    # per item: the input, two methods (hidden sources) and the slider's two pictures
    assert len(widths) == 2 * 5 and all(int(w) > 0 for w in widths), widths
    shot = tmp_path / "shot.png"
    done = subprocess.run([*base, f"--screenshot={shot}", "--window-size=900,1400", (out / "report.html").as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    with Image.open(shot) as picture:
        assert len(np.unique(np.asarray(picture.convert("L")))) > 20  # a page was drawn, not a blank one


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--metrics", "psnr,vmaf"], "--metrics: unknown metric 'vmaf'"),
        (["--baseline", "cubic"], "--baseline: unknown resize 'cubic'"),
        (["--compare", "x=upscale {in}"], "the command must name the input as {in} and the output as {out}"),
        (["--no-model"], "--no-model leaves nothing to evaluate"),
        (["--scale", "0"], "--scale must be 1 or more"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(tmp_path, capsys, argv, message):
    _save(tmp_path / "set" / "a.png", _picture(0, 8, 8))
    assert _eval(str(tmp_path / "set"), "--out", str(tmp_path / "run"), "--model", "tiny", *argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_a_missing_dataset_and_a_changed_rerun_are_refused_in_one_line(tmp_path, capsys):
    assert _eval(str(tmp_path / "nothing"), "--out", str(tmp_path / "run"), "--no-model", "--baseline", "bicubic") == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"seedvr-local: error: {tmp_path / 'nothing'}: not a dataset folder (no such directory)"]
    _save(tmp_path / "set" / "a.png", _picture(0, 8, 8))
    argv = [str(tmp_path / "set"), "--out", str(tmp_path / "run"), "--no-model", "--metrics", "psnr"]
    assert _eval(*argv, "--baseline", "bicubic") == 0
    capsys.readouterr()
    assert _eval(*argv, "--baseline", "lanczos") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds a run with other settings (baselines)" in err[0], err


def test_a_dataset_named_like_a_paper_benchmark_cites_the_paper(tmp_path):
    _save(tmp_path / "UDM10" / "HR" / "a.png", _picture(0, 32, 32))
    out = tmp_path / "run"
    assert _eval(str(tmp_path / "UDM10"), "--out", str(out), "--no-model", "--baseline", "bicubic",
                 "--metrics", "psnr") == 0
    paper = _report(out)["paper"]
    assert paper["dataset"] == "UDM10" and "arXiv:2506.05301" in paper["source"]
    md = (out / "report.md").read_text()
    assert "## Published values on UDM10" in md and "arXiv:2506.05301" in md
    _save(tmp_path / "mine" / "HR" / "a.png", _picture(0, 32, 32))
    assert _eval(str(tmp_path / "mine"), "--out", str(tmp_path / "other"), "--no-model", "--baseline", "bicubic",
                 "--metrics", "psnr") == 0
    assert _report(tmp_path / "other")["paper"] is None


def test_a_killed_run_resumes_where_it_stopped(tmp_path, monkeypatch):
    """SIGKILL while the command works on the third item: the rerun does only that one and what follows."""
    for seed, name in enumerate(("a", "b", "c")):
        _save(tmp_path / "set" / f"{name}.png", _picture(seed, 12, 8))
    script = tmp_path / "slow.py"
    stalling = "if 'c.' in source and os.path.exists(sys.argv[3]):\n    import time\n    time.sleep(60)\n"
    script.write_text(RESIZER.replace("image = Image.open", stalling + "image = Image.open"))
    stall = tmp_path / "stall"
    stall.touch()
    log = tmp_path / "calls.log"
    monkeypatch.setenv("EVAL_LOG", str(log))
    command = f"cmd={shlex.quote(sys.executable)} {script} {{in}} {{out}} {stall}"
    argv = [sys.executable, "-m", "seedvr_local.cli", "eval", str(tmp_path / "set"), "--out", str(tmp_path / "run"),
            "--no-model", "--metrics", "psnr", "--compare", command]
    first = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        done_b = tmp_path / "run" / "items" / "cmd" / "b.json"
        deadline = time.monotonic() + 60
        while not (done_b.exists() and log.exists() and "c.png" in log.read_text()) and time.monotonic() < deadline:
            assert first.poll() is None
            time.sleep(0.05)
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the run and the command it waits for
        first.wait(timeout=30)
    assert done_b.exists()
    kept = {name: (tmp_path / "run" / "items" / "cmd" / f"{name}.json").stat().st_mtime_ns for name in ("a", "b")}
    stall.unlink()
    assert subprocess.run(argv, capture_output=True, timeout=120).returncode == 0
    assert log.read_text().split() == ["a.png", "b.png", "c.png", "c.png"]
    assert {n: (tmp_path / "run" / "items" / "cmd" / f"{n}.json").stat().st_mtime_ns for n in kept} == kept
    assert _report(tmp_path / "run")["methods"]["cmd"]["items_done"] == 3


def test_a_metric_that_cannot_judge_an_item_leaves_the_others(tmp_path, capsys):
    _save(tmp_path / "set" / "HR" / "a.png", _picture(0, 12, 12))  # x2, crop 2: 8x8, under SSIM's window
    out = tmp_path / "run"
    assert _eval(str(tmp_path / "set"), "--out", str(out), "--no-model", "--baseline", "bicubic", "--scale", "2",
                 "--metrics", "psnr,ssim") == 0
    method = _report(out)["methods"]["bicubic"]
    assert set(method["per_item"]["a"]) == {"psnr"} and "SSIM" in method["metric_errors"]["a"]["ssim"]
    report_md = (out / "report.md").read_text()
    assert "bicubic: not measured on a (the image is smaller than SSIM's 11-pixel window" in report_md


def test_a_no_reference_video_file_set_runs_through_the_video_path(tmp_path, capsys):
    from seedvr_local.evaluation.datasets import read_frames
    from seedvr_local.video.samples import make_video

    (tmp_path / "set").mkdir()
    make_video(tmp_path / "set" / "clip.mp4", 16, 12, frames=5, audio=None)
    out = tmp_path / "run"
    code = _eval(str(tmp_path / "set"), "--out", str(out), "--model", "tiny", "--device", "cpu", "--seed", "1",
                 "--scale", "2", "--clip-frames", "5", "--baseline", "nearest", "--metrics", "psnr,tdiff")
    assert code == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    assert "skipped metric psnr: it compares with HR references" in err
    assert "skipped metric tdiff: it compares with HR references" in err
    source = read_frames(tmp_path / "set" / "clip.mp4")
    nearest = sorted((out / "outputs" / "nearest" / "clip").iterdir())
    assert len(nearest) == 5 and len(list((out / "outputs" / "seedvr2" / "clip").iterdir())) == 5
    # nearest x2 of the decoded frames: each source pixel as a 2x2 block
    assert np.array_equal(np.asarray(Image.open(nearest[2])), source[2].repeat(2, axis=0).repeat(2, axis=1))
    report = _report(out)
    assert report["dataset"]["layout"] == "no_hr" and report["methods"]["seedvr2"]["items_done"] == 1


def test_a_compare_command_is_stopped_at_its_timeout(tmp_path, capsys):
    _save(tmp_path / "set" / "a.png", _picture(0, 8, 8))
    command = f"slow={shlex.quote(sys.executable)} -c 'import time; time.sleep(30)' {{in}} {{out}}"
    started = time.monotonic()
    assert _eval(str(tmp_path / "set"), "--out", str(tmp_path / "run"), "--no-model", "--metrics", "psnr",
                 "--compare", command, "--compare-timeout", "1") == 2
    assert time.monotonic() - started < 20
    assert "slow a: failed: the command ran longer than 1 s and was stopped" in capsys.readouterr().err
