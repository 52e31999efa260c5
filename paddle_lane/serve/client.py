"""`paddle-lane client`: a submission folder from a served model. Uploads run concurrently,
each answer is written atomically under the name infer gives it, finished files are skipped on a
rerun, and 503/504/connection failures are retried with backoff (a bounded number of times);
an image the service refuses (4xx) is reported and skipped, not fatal. The folder's manifest.json
records the served model's identity (GET /v1/model) and infer's rules apply to a used --out
(infer/manifest.py): the same model resumes, another one or PNGs without a manifest are refused,
and --overwrite moves the old folder aside."""
from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from tqdm import tqdm

from paddle_lane.core.errors import UserError
from paddle_lane.core.io_utils import atomic_write_bytes
from paddle_lane.core.label_io import UnreadableFileError, image_size

RETRY_STATUS = {502, 503, 504}


def post_image(client, url: str, path: str, retries: int, timeout_s: float) -> bytes:
    """The PNG answer for one image; RuntimeError naming the image when it cannot be had."""
    import httpx
    data = Path(path).read_bytes()
    kind = "image/png" if data[:4] == b"\x89PNG" else "image/jpeg"
    last = ""
    for attempt in range(retries):
        wait = 0.0
        try:
            r = client.post(f"{url}/v1/segment", params={"format": "png"}, content=data,
                            headers={"content-type": kind}, timeout=timeout_s)
        except httpx.TransportError as exc:  # refused, reset, timed out: the service may be restarting
            last = f"{type(exc).__name__}: {exc}"
        else:
            if r.status_code == 200:
                return r.content
            last = f"HTTP {r.status_code}: {r.text[:200]}"
            if r.status_code not in RETRY_STATUS:
                break
            wait = float(r.headers.get("retry-after", 0) or 0)
        if attempt + 1 < retries:  # backoff between attempts, none after the last
            time.sleep(max(wait, min(8.0, 0.25 * 2 ** attempt)))
    raise RuntimeError(f"{path}: {last}")


def run_client(url: str, images_dir: str | None, list_csv: str | None, out: str, concurrency: int = 8,
               retries: int = 5, timeout_s: float = 120.0, config: str | None = None, opts=None,
               no_zip: bool = False, overwrite: bool = False) -> int:
    """Write the service's answers as a submission folder; 0 when every image was answered."""
    import httpx
    from paddle_lane.config import load_config
    from paddle_lane.inference.inputs import images_from
    from paddle_lane.inference.manifest import claim_folder, served_manifest
    from paddle_lane.inference.submission import is_finished, output_name, write_zip, zip_path_for
    if concurrency < 1 or retries < 1:
        raise UserError("--concurrency and --retries must be >= 1")
    url = url.rstrip("/")
    cfg = load_config(config, opts)
    images = images_from(images_dir, list_csv, exclude=[out])
    out_dir = Path(out)
    for name in ("httpx", "httpcore"):  # one progress bar, not a log line per request
        logging.getLogger(name).setLevel(logging.WARNING)
    with httpx.Client(limits=httpx.Limits(max_connections=concurrency)) as client:
        try:
            ready = client.get(f"{url}/readyz", timeout=10)
            model = client.get(f"{url}/v1/model", timeout=10) if ready.status_code == 200 else None
        except httpx.TransportError as exc:
            raise UserError(f"{url}: not reachable ({exc})") from None
        if ready.status_code != 200:
            raise UserError(f"{url}: not ready ({ready.status_code} {ready.text[:100]})")
        if model.status_code != 200:
            raise UserError(f"{url}/v1/model: {model.status_code} {model.text[:100]} (the served model's "
                            "identity is needed to keep a submission one model's)")
        print(claim_folder(out_dir, served_manifest(model.json(), ready.json().get("backend")), overwrite))
        outs = [out_dir / output_name(path, cfg.infer.name_suffix) for _, path in images]
        todo, failed = [], []
        for (key, path), dest in zip(images, outs):
            try:
                if not is_finished(dest, image_size(path)):
                    todo.append((path, dest))
            except UnreadableFileError as exc:
                failed.append(f"{path}: {exc}")
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=concurrency) as pool, \
                tqdm(total=len(todo), desc="client", unit="img", dynamic_ncols=True) as bar:
            futures = {pool.submit(post_image, client, url, path, retries, timeout_s): dest for path, dest in todo}
            for fut in as_completed(futures):
                try:
                    atomic_write_bytes(futures[fut], fut.result())
                except RuntimeError as exc:
                    failed.append(str(exc))
                bar.update(1)
    seconds = time.perf_counter() - t0
    print(f"client: {len(images)} images, {len(images) - len(todo)} already done, {len(todo)} sent, "
          f"{len(failed)} failed, in {seconds:.1f} s ({len(todo) / seconds if seconds > 0 else 0:.2f} img/s)")
    for f in failed:
        print(f"  failed: {f}")
    if not no_zip:
        print(f"zip: {write_zip([o for o in outs if o.is_file()], zip_path_for(out_dir))}")
    return 1 if failed else 0
