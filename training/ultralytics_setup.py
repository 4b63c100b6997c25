"""Run Ultralytics fully offline: no online check, no pip installs, no font or weight downloads.

Ultralytics reads its configuration from the environment once, at import, so
`configure_offline()` must run before the first `import ultralytics` anywhere in boxgen
(`import_ultralytics()` does both). What it sets up, and why:

- `YOLO_OFFLINE=1` skips the online check at import and disables telemetry.
- `YOLO_AUTOINSTALL=0` stops Ultralytics pip-installing packages it thinks are missing.
- `YOLO_CONFIG_DIR` points at a boxgen-owned folder, so settings and fonts live with us.
- A local TTF (matplotlib's DejaVuSans, which always ships with matplotlib) is copied to
  `$YOLO_CONFIG_DIR/Ultralytics/Arial.ttf` and `Arial.Unicode.ttf`: dataset checks call
  `check_font('Arial.ttf')`, which downloads the font when it is missing, even with plots off.

Anything else that still tries to download (a weight name like `yolov5n.pt` instead of a
model yaml, say) fails at once with `DownloadBlocked`, via `block_downloads()`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

DEFAULT_HOME = Path("~/.cache/boxgen/ultralytics")
FONT_NAMES = ("Arial.ttf", "Arial.Unicode.ttf")


class DownloadBlocked(ConnectionError):
    """Ultralytics tried to download something; boxgen never downloads at run time.

    A `ConnectionError`, so Ultralytics' own offline fallbacks (e.g. skipping the AMP check
    on GPU, which wants `yolo26n.pt`) still apply.
    """


def _local_font() -> Path:
    """A TTF that is on this machine without a download: matplotlib's bundled DejaVuSans."""
    import matplotlib  # an Ultralytics dependency, so always present where Ultralytics is

    font = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    if not font.is_file():
        raise FileNotFoundError(f"no local TTF font found at {font}; reinstall matplotlib")
    return font


def _install_fonts(user_dir: Path) -> None:
    user_dir.mkdir(parents=True, exist_ok=True)
    font = _local_font()
    for name in FONT_NAMES:
        target = user_dir / name
        if not target.is_file():
            shutil.copyfile(font, target)


def configure_offline(home: Path | None = None) -> Path:
    """Set Ultralytics' environment for offline use and install fonts; returns the config dir.

    `home` is the folder given to Ultralytics as `YOLO_CONFIG_DIR` (default
    `~/.cache/boxgen/ultralytics`, or `$BOXGEN_ULTRALYTICS_HOME`). Idempotent and cheap.
    """
    home = Path(home or os.environ.get("BOXGEN_ULTRALYTICS_HOME") or DEFAULT_HOME).expanduser()
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "0"
    os.environ["YOLO_CONFIG_DIR"] = str(home)
    _install_fonts(home / "Ultralytics")
    if "ultralytics" in sys.modules:
        # Imported before us (e.g. by a test or a notebook): its config dir is already fixed,
        # so give that one the fonts too, and switch its online flag off.
        import ultralytics.utils as ultralytics_utils

        _install_fonts(Path(ultralytics_utils.USER_CONFIG_DIR))
        ultralytics_utils.ONLINE = False
    return home


def import_ultralytics(home: Path | None = None) -> ModuleType:
    """`configure_offline(home)`, then import Ultralytics with its integrations switched off."""
    configure_offline(home)
    import ultralytics

    # No hub sync and no third-party loggers: they phone home or write outside our run dir.
    ultralytics.settings.update(
        sync=False, clearml=False, comet=False, dvc=False, mlflow=False, raytune=False,
        tensorboard=False, wandb=False, vscode_msg=False, openvino_msg=False,
    )
    return ultralytics


def _refuse_download(url: object = "", *args: object, **kwargs: object) -> None:
    raise DownloadBlocked(
        f"Ultralytics tried to download {url!s}, but boxgen runs offline: give a model yaml "
        "(e.g. yolov5n.yaml) and local files only"
    )


@contextlib.contextmanager
def block_downloads() -> Iterator[None]:
    """Within the block, any Ultralytics download raises `DownloadBlocked` instead of trying.

    Downloads go through `safe_download` (imported by name in a few modules, so each binding
    is replaced); `get_github_assets` asks the GitHub API which weights exist, and
    `is_url(check=True)` probes a URL. All are restored afterwards.
    """
    import ultralytics.data.utils as data_utils
    import ultralytics.utils.downloads as downloads

    is_url = downloads.is_url

    def offline_is_url(url: object, check: bool = False) -> bool:
        if check:
            _refuse_download(url)
        return is_url(url, check=False)

    patches = [(downloads, "safe_download", _refuse_download),
               (data_utils, "safe_download", _refuse_download),
               (downloads, "get_github_assets", _refuse_download),
               (downloads, "is_url", offline_is_url)]
    patches = [(module, name, new) for module, name, new in patches if hasattr(module, name)]
    saved = [(module, name, getattr(module, name)) for module, name, _ in patches]
    for module, name, replacement in patches:
        setattr(module, name, replacement)
    try:
        yield
    finally:
        for module, name, original in saved:
            setattr(module, name, original)
