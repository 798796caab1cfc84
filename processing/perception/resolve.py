"""Models named on the command line resolved once, in the parent, before any run folder exists.

A Hub id becomes a local snapshot folder (downloaded once, or found in the Hugging Face cache when
``HF_HUB_OFFLINE`` is set or the Hub is unreachable); a local folder must hold a readable
``config.json``. Workers then load from the folder: no worker downloads, retries or times out, and
a model that cannot be had fails at once with one line naming the flag and the model.

Example:
    >>> resolve_model("depth-anything/Depth-Anything-V2-Small-hf", "--depth-model")   # doctest: +SKIP
    '/root/.cache/huggingface/hub/models--depth-anything--.../snapshots/<sha>'
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from ..readers import BadInputError

logger = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
# weights of other frameworks: never needed by transformers' PyTorch classes
_IGNORE = ["*.msgpack", "*.h5", "*.ot", "*.onnx", "*.tflite", "*.mlmodel", "*.mlpackage/*", "onnx/*", "coreml/*"]


def resolve_model(model: str, flag: str) -> str:
    """A local folder holding ``model`` (a Hub id or a folder); raises :class:`BadInputError` naming
    ``flag`` when it cannot be found, read, or fetched."""
    path = Path(model).expanduser()
    if path.is_dir():
        config = path / "config.json"
        try:
            json.loads(config.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise BadInputError(f"{flag} {model!r}: the folder has no config.json (not a saved transformers model)") from None
        except (OSError, ValueError) as err:
            raise BadInputError(f"{flag} {model!r}: cannot read {str(config)!r} ({err})") from err
        return str(path.resolve())
    if path.exists():
        raise BadInputError(f"{flag} {model!r} is a file; give a model folder or a Hugging Face model id")
    if model.startswith(("/", ".", "~")) or model.count("/") > 1 or not _HUB_ID.match(model) or (
        "/" in model and Path(model.split("/", 1)[0]).is_dir()
    ):
        raise BadInputError(f"{flag} {model!r}: no such folder (and not a Hugging Face model id)")
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    offline = bool(constants.HF_HUB_OFFLINE)
    try:
        folder = snapshot_download(model, local_files_only=offline, ignore_patterns=_IGNORE)
    except LocalEntryNotFoundError as err:
        why = "HF_HUB_OFFLINE is set" if offline else "the Hub cannot be reached"
        raise BadInputError(
            f"{flag} {model!r}: {why} and the model is not in the Hugging Face cache ({constants.HF_HUB_CACHE}); "
            "download it once online, or give a local folder"
        ) from err
    except RepositoryNotFoundError as err:
        raise BadInputError(f"{flag} {model!r}: no such model on the Hub (or it is private: set HF_TOKEN)") from err
    except (HfHubHTTPError, OSError) as err:
        raise BadInputError(f"{flag} {model!r}: cannot be fetched from the Hub ({type(err).__name__}: {err})") from err
    logger.info("%s %s -> %s", flag, model, folder)
    return folder
