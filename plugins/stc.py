"""ShanghaiTech Campus (STC) as a dataset plugin ("stc"): one category per camera scene.

Supported layout: the public release (shanghaitech.tar.gz from https://svip-lab.github.io/dataset/campus_dataset.html,
W. Liu, W. Luo, D. Lian, S. Gao, CVPR 2018) with the training videos extracted to frames::

    <root>/training/frames/<scene>_<clip>/<n>.jpg        e.g. training/frames/01_001/000.jpg (330 clips, 274,515 frames)
    <root>/testing/frames/<scene>_<clip>/<n>.jpg         e.g. testing/frames/01_0014/000.jpg (107 clips)
    <root>/testing/test_pixel_mask/<scene>_<clip>.npy    (frames, H, W), non-zero = anomalous pixel
    <root>/testing/test_frame_mask/<scene>_<clip>.npy    (frames,), 1 = anomalous frame (the sample's label)

The release ships the training set as videos (``training/videos/<scene>_<clip>.avi``); decoding them would
need a video library the project does not depend on, so they are extracted once with ffmpeg (the error a
videos-only root gives prints the command). Frames are ordered by the number in their name, whether or not it
is zero-padded.

Categories are "scene01" ... "scene13" (names that stay strings in YAML), listed when the scene has both
training frames and test clips. The public test set covers scenes 01-12 only, so scene 13 (training videos
only) is skipped with a log line.

Preprocessing (the paper's): resize to ``image_size`` x ``image_size`` (bicubic; masks nearest), no crop.
Training is streamed: a split holds file paths, and each pixel mask is memory-mapped so that one frame's mask
is read per sample. ``frame_stride`` keeps every n-th training frame (``test_frame_stride`` the same for test).

Bad data: a missing root, scene, pixel or frame mask, or a clip whose frame count differs from its masks is a
one-line error when the split is built; an unreadable frame, or a mask of another size than its frame, when
it is loaded; stray files are skipped with a log line.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from anombench import hookimpl
from anombench.api import Family
from anombench.errors import UserError
from anombench.hookspecs import Register
from anombench.params import PositiveInt, check_arguments
from anombench_plugins.datafetch import fetch_archive
from anombench_plugins.datacheck import FilePreflight
from anombench_plugins.imagefiles import (
    FileSplit,
    Record,
    ResizeCrop,
    check_sizes,
    list_images,
    list_subfolders,
    resolve_root,
)

log = logging.getLogger("anombench.data")

ENV_ROOT = "ANOMBENCH_DATA_STC"
SCENES = tuple(f"{n:02d}" for n in range(1, 14))
TESTED_SCENES = SCENES[:12]  # the public test set covers scenes 01-12: the paper's STC mean is over these
PAGE = "https://svip-lab.github.io/dataset/campus_dataset.html"
MISSING_HINT = (
    f"download shanghaitech.tar.gz from {PAGE}, extract it and its training videos as "
    "`anombench data download stc --root {root}` explains, then pass --data stc=/path/to/shanghaitech "
    f"(or set {ENV_ROOT})"
)
EXTRACT_COMMAND = (
    "cd {root}/training && for v in videos/*.avi; do d=frames/$(basename $v .avi); mkdir -p $d && "
    "ffmpeg -loglevel error -i $v -qscale:v 2 -start_number 0 $d/%03d.jpg; done"
)
ROW = "{:<8} {:>12} {:>13} {:>11} {:>12} {:>10}{}"  # one line of the ``check`` table
_CLIP = re.compile(r"(\d{2})_(\d+)")


def instructions(root: str) -> str:
    """Where to get STC and how to lay it out, with the user's root filled in."""
    return f"""ShanghaiTech Campus cannot be downloaded automatically (it is shared through cloud drives).
1. Download shanghaitech.tar.gz from {PAGE} and extract it.
   The root is the folder that holds training/ and testing/ (the archive may wrap them in shanghaitech/).
2. Extract the training videos to frames (needs ffmpeg):
     {EXTRACT_COMMAND.format(root=root)}
3. The root must then look like:
     {root}/training/frames/01_001/000.jpg ...
     {root}/testing/frames/01_0014/000.jpg ...
     {root}/testing/test_pixel_mask/01_0014.npy
     {root}/testing/test_frame_mask/01_0014.npy
4. Check it with `anombench data check stc --root {root}`; run with --data stc={root} or set {ENV_ROOT}.
If you have a mirror of the archive, `anombench data download stc --root {root} --url URL [--sha256 H]` fetches
and extracts it (then do step 2)."""


def _clips(folder: Path, scene: str) -> list[Path]:
    """Clip folders of one scene ("01_0014" for scene "01"), in natural order."""
    return [p for p in list_subfolders(folder) if (m := _CLIP.fullmatch(p.name)) and m.group(1) == scene]


def _scene_of(category: str) -> str:
    return category.removeprefix("scene")


@dataclass(frozen=True)
class NpyFrameMask:
    """One frame of a clip's (frames, H, W) pixel-mask stack, read through a memory map (one frame, not the clip)."""

    path: str
    index: int

    def load(self) -> Image.Image:
        try:
            frame = np.load(self.path, mmap_mode="r")[self.index]
        except (OSError, ValueError, IndexError) as exc:
            raise UserError(f"cannot read frame {self.index} of pixel mask {self.path}: {exc}") from None
        return Image.fromarray((np.asarray(frame) > 0).astype(np.uint8))


def _mask_stack(path: Path, what: str, clip: Path) -> np.ndarray:
    """A clip's mask array, memory-mapped (the header gives its shape without reading the data)."""
    if not path.is_file():
        raise UserError(f"test clip {clip} has no {what} {path}: the testing folder is incomplete")
    try:
        return np.load(path, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {what} {path}: {exc}") from None


class ShanghaiTechCampus(FilePreflight):
    """STC: per scene, train on normal surveillance frames, test on frames with pixel-level anomaly masks."""

    def __init__(
        self, root: str | None = None, image_size: PositiveInt = 256, frame_stride: PositiveInt = 1,
        test_frame_stride: PositiveInt = 1,
    ) -> None:
        check_sizes(ShanghaiTechCampus, "stc", image_size, None)
        check_arguments(ShanghaiTechCampus, {"frame_stride": frame_stride, "test_frame_stride": test_frame_stride},
                        "stc")
        self.root = resolve_root(root, ENV_ROOT, MISSING_HINT)
        self.image_size = image_size
        self.frame_stride = frame_stride
        self.test_frame_stride = test_frame_stride
        self.train_dir = self.root / "training" / "frames"
        self.test_dir = self.root / "testing" / "frames"
        self._check_layout()
        self._categories = self._scan_scenes()
        if not self._categories:
            raise UserError(f"no scene has both training frames and test clips in {self.root}")

    def _check_layout(self) -> None:
        if not self.test_dir.is_dir():
            raise UserError(f"no {self.test_dir} in the STC root: " + MISSING_HINT.format(root=self.root))
        if not self.train_dir.is_dir():
            if (self.root / "training" / "videos").is_dir():
                raise UserError(
                    f"STC training frames not found in {self.train_dir}, only videos: extract them once with "
                    f"`{EXTRACT_COMMAND.format(root=self.root)}`"
                )
            raise UserError(f"no {self.train_dir} in the STC root: " + MISSING_HINT.format(root=self.root))

    def _scan_scenes(self) -> list[str]:
        """Scenes with training and test clips; scanned once, since a run does not expect the data to change."""
        present = []
        for scene in SCENES:
            has_train, has_test = bool(_clips(self.train_dir, scene)), bool(_clips(self.test_dir, scene))
            if has_train and has_test:
                present.append(f"scene{scene}")
            elif has_train:
                log.info("STC scene %s has training frames but no test clips (as released); skipped", scene)
        return present

    def categories(self) -> list[str]:
        return list(self._categories)

    def known_categories(self) -> list[str]:
        return [f"scene{scene}" for scene in TESTED_SCENES]

    def family(self, category: str) -> Family:
        self._known_scene(category)
        return "other"

    def train(self, category: str, seed: int) -> FileSplit:
        scene = self._scene(category)
        records = [
            Record(str(frame), None, 0, f"{clip.name}/{frame.stem}")
            for clip in _clips(self.train_dir, scene)
            for frame in list_images(clip)[:: self.frame_stride]
        ]
        if not records:
            raise UserError(f"no training frames for STC scene {scene} in {self.train_dir}")
        return FileSplit(records, ResizeCrop(self.image_size, None))

    def test(self, category: str, seed: int) -> FileSplit:
        scene = self._scene(category)
        records = [record for clip in _clips(self.test_dir, scene) for record in self._clip_records(clip)]
        if not records:
            raise UserError(f"no test frames for STC scene {scene} in {self.test_dir}")
        return FileSplit(records, ResizeCrop(self.image_size, None))

    def _clip_records(self, clip: Path) -> list[Record]:
        """One test clip's frames with their labels (frame mask) and masks (pixel mask), counts cross-checked."""
        frames = list_images(clip)
        testing = self.root / "testing"
        pixel_path = testing / "test_pixel_mask" / f"{clip.name}.npy"
        pixel = _mask_stack(pixel_path, "pixel mask", clip)
        labels = np.asarray(_mask_stack(testing / "test_frame_mask" / f"{clip.name}.npy", "frame mask", clip)) > 0
        if not (len(frames) == len(pixel) == len(labels)):
            raise UserError(
                f"test clip {clip} has {len(frames)} frames but its pixel mask has {len(pixel)} "
                f"and its frame mask {len(labels)}"
            )
        return [
            Record(str(frame), NpyFrameMask(str(pixel_path), i), int(labels[i]), f"{clip.name}/{frame.stem}")
            for i, frame in enumerate(frames)
        ][:: self.test_frame_stride]

    @staticmethod
    def _known_scene(category: str) -> str:
        scene = _scene_of(category)
        if scene not in SCENES:
            raise UserError(f"unknown STC category '{category}'; the categories are scene01 ... scene13")
        return scene

    def _scene(self, category: str) -> str:
        scene = self._known_scene(category)
        if f"scene{scene}" not in self._categories:
            raise UserError(
                f"STC category '{category}' not found in {self.root} (present: {', '.join(self._categories)})"
            )
        return scene

    @staticmethod
    def download(root: str, url: str | None = None, sha256: str | None = None) -> None:
        """Print how to get STC; with a ``url`` (a mirror of the archive) fetch and extract it into ``root``."""
        if url is None:
            print(instructions(root))
            raise UserError(f"ShanghaiTech Campus must be downloaded by hand: follow the steps above ({PAGE})")
        fetch_archive(url, Path(root).expanduser(), sha256)
        print(instructions(root))

    @staticmethod
    def check(root: str, categories: Sequence[str] | None = None) -> str:
        """Per scene of ``categories`` (default: all 13): training clips and frames, test clips, frames and
        anomalous frames."""
        path = resolve_root(root, ENV_ROOT, MISSING_HINT)
        header = ROW.format("scene", "train clips", "train frames", "test clips", "test frames", "anomalous", "")
        lines = [f"ShanghaiTech Campus at {path}", header]
        for scene in categories or SCENES:
            lines.append(_scene_row(path, scene))
        if not (path / "training" / "frames").is_dir() and (path / "training" / "videos").is_dir():
            lines.append("training frames missing, only videos: " + EXTRACT_COMMAND.format(root=path))
        return "\n".join(lines)


def _scene_row(root: Path, scene: str) -> str:
    """One line of ``check``: counts only, and the frame labels summed (frame masks are tiny)."""
    train_clips = _clips(root / "training" / "frames", scene)
    test_clips = _clips(root / "testing" / "frames", scene)
    train_frames = sum(len(list_images(c)) for c in train_clips)
    test_frames = sum(len(list_images(c)) for c in test_clips)
    label_files = [root / "testing" / "test_frame_mask" / f"{c.name}.npy" for c in test_clips]
    anomalous = sum(int((np.load(f) > 0).sum()) for f in label_files if f.is_file())
    missing = sum(1 for f in label_files if not f.is_file())
    note = f"  ({missing} frame masks missing)" if missing else ""
    return ROW.format(f"scene{scene}", len(train_clips), train_frames, len(test_clips), test_frames, anomalous, note)


@hookimpl
def anombench_register_datasets(register: Register) -> None:
    register("stc", ShanghaiTechCampus)
