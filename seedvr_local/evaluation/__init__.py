"""`seedvr-local eval`: quality and speed of restorations on a dataset, in one reproducible report.

This package owns what a benchmark run is made of, each in its own module:

- `datasets`: reading a dataset folder (paired HR/LR, HR only, no HR, videos) into items;
- `degradations`: the stated degradation that makes LR inputs from HR-only sets;
- `metrics`: PSNR/SSIM (written here), a temporal measure for videos, and the pretrained metrics of pyiqa;
- `methods`: what restores an item: this model, resize baselines, another upscaler's command line;
- `runner`: the run itself, item by item, resumable;
- `report` (with `plots` and `paper`): report.json, .csv, .md and the self-contained report.html.

It uses the upscaler and the video path, never the server; nothing here loads torch at import.
"""
