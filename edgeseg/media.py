"""Pictures and clips in and out: read an image, decode a video or a folder of frames, write GIF/MP4.

Decoding goes through PIL (images) and imageio with its PyAV plugin (video files); an input that
cannot be decoded is an :class:`~edgeseg.errors.EdgesegError` naming the file. Arrays are uint8
``[H, W, 3]`` RGB.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.errors import EdgesegError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".gif")


def as_rgb(array: Any, name: str) -> np.ndarray:
    """``array`` as uint8 ``[H, W, 3]`` (grey and RGBA converted; bool scaled to 0/255)."""
    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4) or not min(array.shape[:2]):
        raise EdgesegError(f"image {name} has shape {list(array.shape)}, not an RGB image")
    return np.ascontiguousarray(array[..., :3].astype(np.uint8))


def read_image(path: str | Path) -> np.ndarray:
    """An image file as uint8 RGB, or a one-line error when it is missing or not an image."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise EdgesegError(f"image {path} does not exist")
    try:
        with Image.open(path) as img:
            array = np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise EdgesegError(f"{path} is not an image that PIL can read") from exc
    return as_rgb(array, path.name)


def _imageio() -> Any:
    from edgeseg.errors import require_extra

    require_extra("video", "sam3", "imageio", "av")
    import imageio.v3 as iio

    return iio


def read_video(path: str | Path, max_frames: int | None = None) -> list[np.ndarray]:
    """Frames of a video file (imageio + PyAV), or of a folder of images in name order."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
        if not files:
            raise EdgesegError(f"frames folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        return [read_image(p) for p in files[:max_frames]]
    if not path.is_file():
        raise EdgesegError(f"video {path} does not exist")
    iio = _imageio()
    frames: list[np.ndarray] = []
    plugin = "pillow" if path.suffix.lower() == ".gif" else "pyav"
    try:
        for frame in iio.imiter(path, plugin=plugin):
            frames.append(as_rgb(frame, path.name))
            if max_frames is not None and len(frames) >= max_frames:
                break
    except EdgesegError:
        raise
    except (OSError, ValueError, RuntimeError) as exc:  # imageio/PyAV's errors for unreadable media
        raise EdgesegError(f"{path} is not a video that can be decoded ({str(exc).splitlines()[0][:120]})") from exc
    if not frames:
        raise EdgesegError(f"{path} holds no video frames")
    return frames


def write_animation(path: Path, frames: Sequence[np.ndarray], fps: float = 4.0) -> Path:
    """Frames as an animated GIF (``.gif``, pillow) or MP4 (``.mp4``, PyAV / libx264)."""
    iio = _imageio()
    path = Path(path)
    if path.suffix.lower() == ".gif":
        iio.imwrite(path, np.stack(frames), plugin="pillow", duration=int(1000 / fps), loop=0)
    else:
        even = [f[: f.shape[0] // 2 * 2, : f.shape[1] // 2 * 2] for f in frames]  # yuv420p needs even sides
        iio.imwrite(path, np.stack(even), plugin="pyav", codec="libx264", fps=fps)
    return path


__all__ = ["IMAGE_SUFFIXES", "VIDEO_SUFFIXES", "as_rgb", "read_image", "read_video", "write_animation"]
