"""Client-level DP that leaves nothing to learn is said before the run, with what would work."""

from __future__ import annotations

from uaap.config import RunConfig
from uaap.privacy.utility import central_noise_ratio, hopeless_noise_warning, model_size


def test_the_deploy_guides_old_recipe_is_flagged_and_the_demos_is_not() -> None:
    # docs/deploy.md used to run 3 clients with noise multiplier 1 on breast_cancer (30 features, 2 classes):
    # accuracy 0.07-0.10 and a client diverging to NaN
    old = RunConfig(dataset="breast_cancer", model="logreg", num_clients=3, dp_central=True, dp_noise_multiplier=1.0)
    size = model_size(old, 30, 2, None)
    assert size == 62
    warning = hopeless_noise_warning(old, size)
    assert warning is not None and "will not learn" in warning and "about 8 clients per round" in warning
    # the demo: 10 clients, noise multiplier 0.02, the digits MLP
    demo = RunConfig(model="mlp", num_clients=10, dp_central=True, dp_noise_multiplier=0.02)
    assert hopeless_noise_warning(demo, model_size(demo, 64, 10, None)) is None
    assert hopeless_noise_warning(old.replace(dp_central=False), size) is None


def test_the_ratio_is_noise_norm_over_the_largest_average() -> None:
    assert central_noise_ratio(1.0, 100, 10_000) == 1.0  # z sqrt(d) / (q N) = 100 / 100
    assert central_noise_ratio(2.0, 10, 100) == 2.0


def test_the_ratio_counts_fractional_clients_and_a_one_parameter_model() -> None:
    assert central_noise_ratio(1.0, 0.5, 100) == 20.0  # half a client per round on average doubles the noise
    assert central_noise_ratio(2.0, 4.0, 1) == 0.5  # sqrt(1) = 1
    assert central_noise_ratio(1.0, 0.0, 4) == 2e12  # no client per round: the floor 1e-12, not 1


def test_the_warning_starts_just_above_a_ratio_of_one_and_says_what_would_work() -> None:
    at_one = RunConfig(num_clients=10, dp_central=True, dp_noise_multiplier=1.0)  # 1 x sqrt(100) / 10 = 1
    assert hopeless_noise_warning(at_one, 100) is None
    above = at_one.replace(dp_noise_multiplier=1.5)  # 1.5 x 10 / 10 = 1.5
    assert hopeless_noise_warning(above, 100) == (
        "client-level DP noise is about 1.5x the largest update the clients can make together (noise multiplier "
        "1.5, 100 parameters, 10 clients per round): the model will not learn. It needs about 15 clients per round "
        "at this noise multiplier, a smaller --dp-noise-multiplier (a larger epsilon), or example-level DP on the "
        "clients (--dp-local true)"
    )


def test_a_cnns_size_comes_from_its_image_shape() -> None:
    # by hand for 1x8x8 images and 10 classes: conv 1->16 (3x3) 160, conv 16->32 4640, dense 32*4*4->64 32832,
    # dense 64->10 650
    assert model_size(RunConfig(model="cnn"), 64, 10, (1, 8, 8)) == 160 + 4640 + 32832 + 650
