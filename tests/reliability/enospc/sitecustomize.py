"""Test hook: a full disk while `boxgen finetune` publishes (tests/reliability/test_faults.py).

On the PYTHONPATH of a test server, Python imports this in every process of it. It acts only in
fine-tune processes, and only while the file named by BOXGEN_TEST_ENOSPC_FLAG exists: then a
copy into a model's staging folder writes half the file and fails with ENOSPC, as a full volume
does. Not part of the product: no boxgen module knows about it.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

FLAG_ENV = "BOXGEN_TEST_ENOSPC_FLAG"


def _install(flag: Path) -> None:
    real_copyfile = shutil.copyfile

    def copyfile(src, dst, *args, **kwargs):  # noqa: ANN001, ANN202 (shutil's signature)
        target = Path(dst)
        if flag.exists() and any(p.name.startswith(".staging-") for p in target.parents):
            data = Path(src).read_bytes()
            target.write_bytes(data[: len(data) // 2])  # the volume filled mid-file
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))
        return real_copyfile(src, dst, *args, **kwargs)

    shutil.copyfile = copyfile


def _is_finetune() -> bool:
    try:  # sys.argv is not set yet while site runs
        argv = Path("/proc/self/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"training.cli" in argv and b"finetune" in argv


if os.environ.get(FLAG_ENV) and _is_finetune():
    _install(Path(os.environ[FLAG_ENV]))
