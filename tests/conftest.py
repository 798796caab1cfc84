"""Test-wide settings: every cache goes to a throw-away folder, and no test may reach a hub."""

import os
import tempfile

_HOME = tempfile.mkdtemp(prefix="spatialforge-tests-hf-")
os.environ.setdefault("HF_HOME", _HOME)
os.environ.setdefault("HF_DATASETS_CACHE", os.path.join(_HOME, "datasets"))
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("SPATIALFORGE_CACHE", os.path.join(_HOME, "spatialforge"))
