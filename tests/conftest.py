import os
import warnings

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the suite never touches a model hub
warnings.filterwarnings("ignore", category=DeprecationWarning)


@pytest.fixture(scope="session")
def dense():
    from circuitry import load_model

    return load_model("tiny-dense")


@pytest.fixture(scope="session")
def small_tokenizer():
    """The zoo tokenizer built from a small corpus sample (fast; same construction as shipped)."""
    from circuitry.zoo.tokenizer import build_tokenizer

    return build_tokenizer(n_sentences=3000)
