import os

from hypothesis import HealthCheck, settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Deterministic example generation: CI runs the same examples every time. Set
# SSD_HYPOTHESIS_PROFILE=explore locally to search with fresh random examples.
settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("explore", deadline=None, max_examples=500)
settings.load_profile(os.environ.get("SSD_HYPOTHESIS_PROFILE", "ci"))
