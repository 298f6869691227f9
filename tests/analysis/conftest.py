"""Fixtures of the analysis tests."""
import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tensors here are tiny: one intra-op thread is 20-30x faster than two on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def counterfactual_nets(spark):
    """Four lane nets with a known reliance (tests/analysis/test_counterfactual.py, which tests their verdicts);
    the gate's tests audit one of them too."""
    from tests.analysis.test_counterfactual import train_all

    return train_all(spark)
