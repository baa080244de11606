"""A converted model that has already run ships to other processes: multiprocessing workers and
Ray Data actors (map_batches with a callable class), and their logits equal a local run's."""
import concurrent.futures
import copy
import multiprocessing
import sys

import numpy as np
import pytest
import torch
import torchvision

import fused_resnet

from helpers import random_model

IMAGES = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(3))


def _converted_model_that_ran():
    tv = random_model(torchvision.models.resnet18)
    fused = fused_resnet.convert(copy.deepcopy(tv)).eval()
    with torch.inference_mode():
        local = fused(IMAGES)  # fold caches and launch plans exist now: they must not travel
    return fused, local


def _worker_logits(model, images):
    torch.set_num_threads(1)
    with torch.inference_mode():
        return model(images)


def test_multiprocessing_workers():
    fused, local = _converted_model_that_ran()
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx) as pool:
        outs = list(pool.map(_worker_logits, [fused, fused], [IMAGES[:4], IMAGES[4:]]))
    torch.testing.assert_close(torch.cat(outs), local, rtol=1e-5, atol=1e-5)


class Predictor:
    """Ray Data callable class: one converted model per actor, batches of images in, logits out."""

    def __init__(self, model):
        torch.set_num_threads(1)
        self.model = model.eval()

    def __call__(self, batch: dict) -> dict:
        with torch.inference_mode():
            return {"logits": self.model(torch.from_numpy(batch["data"])).numpy()}


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    # The test module is not importable in Ray's workers: send Predictor by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def test_ray_data_actors(ray_local):
    import ray.data

    fused, local = _converted_model_that_ran()
    ds = ray.data.from_numpy(IMAGES.numpy())
    out = ds.map_batches(Predictor, fn_constructor_kwargs={"model": fused}, batch_size=2, concurrency=2,
                         num_cpus=1).take_all()
    logits = torch.from_numpy(np.stack([row["logits"] for row in out]))
    # Ray Data may reorder blocks: match rows to the local logits by nearest neighbour.
    dist = torch.cdist(logits.double(), local.double())
    assert sorted(dist.argmin(1).tolist()) == list(range(len(IMAGES)))
    assert float(dist.min(1).values.max()) < 1e-4 * float(local.abs().max())
