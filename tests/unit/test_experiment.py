"""The landmark experiment: typed config, the seed's model, loaders and the feature cache."""

from __future__ import annotations

import json

import pytest
import torch

from mist_core import freeze, is_frozen
from mist_core.data import FeatureCache, SyntheticFaces
from mist_core.encoders import ResNet18Encoder
from mist_core.experiment import (
    PRESETS,
    ExperimentConfig,
    LandmarkExperiment,
    preset,
    resize_images,
)

TINY = dict(
    train_size=48,
    test_size=24,
    image_size=(40, 32),
    batch_size=16,
    epochs=1,
    encoders=("random_init", "trained"),
    landmarks=("left_eye", "nose"),
)


@pytest.fixture(scope="module")
def tiny_experiment() -> LandmarkExperiment:
    return LandmarkExperiment(preset("demo-cpu", **TINY))


def test_config_json_round_trip(tmp_path):
    config = preset("demo-cpu", epochs=3, landmarks=["nose"])
    assert config.landmarks == ("nose",), "lists from JSON become tuples"
    path = tmp_path / "config.json"
    config.save(path)
    assert json.loads(path.read_text())["epochs"] == 3
    assert ExperimentConfig.load(path) == config


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_are_valid_configs(name):
    config = preset(name)
    assert ExperimentConfig.from_json(config.to_json()) == config


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"dataset": "imagenet"}, "dataset must be one of"),
        ({"dataset": "celeba", "celeba_root": None}, "celeba_root"),
        ({"encoders": ("random_init", "vgg")}, "unknown: \\['vgg'\\]"),
        ({"landmarks": ("chin",)}, "landmarks must be among"),
        ({"estimator": "infonce"}, "estimator must be one of doe, club, l1out"),
        ({"train_size": 1}, "train_size must be at least 2"),
        ({"image_size": (16, 16)}, "image_size"),
        ({"epochs": 0}, "epochs must be >= 1"),
        ({"lr": 0.0}, "lr must be positive"),
    ],
)
def test_config_errors_name_the_field(changes, message):
    with pytest.raises(ValueError, match=message):
        preset("demo-cpu", **changes)


def test_unknown_fields_and_bad_json_are_refused():
    with pytest.raises(ValueError, match=r"unknown config field\(s\) \['epoch'\]; valid fields"):
        ExperimentConfig.from_dict({"epoch": 3})
    with pytest.raises(ValueError, match="not valid JSON"):
        ExperimentConfig.from_json("{epochs: 3")
    with pytest.raises(ValueError, match="unknown preset 'demo'"):
        preset("demo")


def test_the_seed_model_structure(tiny_experiment):
    exp = tiny_experiment
    estimators = exp.estimator.estimators
    assert list(estimators) == [
        "random_init;left_eye",
        "trained;left_eye",
        "random_init;nose",
        "trained;nose",
    ]
    assert estimators["random_init;nose"].q_Y is estimators["trained;nose"].q_Y
    assert estimators["random_init;nose"].q_Y is not estimators["random_init;left_eye"].q_Y
    assert is_frozen(exp.encoders["random_init"]) and not is_frozen(exp.encoders["trained"])
    assert exp.estimator.infomax_gradient == {
        "random_init": True,
        "left_eye": False,
        "trained": True,
        "nose": False,
    }
    # Training runs only the trained encoder; the frozen one is read from the cache.
    assert set(exp.training_model().transforms) == {"trained"}
    assert set(exp.model.transforms) == {"random_init", "trained"}


def test_unavailable_encoders_say_how_to_enable_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="'pretrained' is not available: ImageNet weights"):
        LandmarkExperiment(preset("demo-cpu", **{**TINY, "encoders": ("pretrained",)}))


def test_preloaded_images_are_what_the_encoder_would_see(tiny_experiment):
    exp = tiny_experiment
    raw = SyntheticFaces(exp.config.train_size, seed=exp.config.seed)
    preloaded = exp.datasets()["train"]
    item = raw[5]
    assert preloaded[5]["image"].shape == (3, 40, 32)
    torch.testing.assert_close(preloaded[5]["nose"], item["nose"])
    encoder = exp.encoders["random_init"]
    with torch.no_grad():
        full = encoder(item["image"].unsqueeze(0))
        small = encoder(preloaded[5]["image"].unsqueeze(0))
    torch.testing.assert_close(full, small, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(
        resize_images(item["image"].unsqueeze(0), (40, 32))[0], preloaded[5]["image"]
    )


def test_cached_features_match_computing_them_each_time(tiny_experiment):
    exp = tiny_experiment
    batch = next(iter(exp.loader("test", shuffle=False)))
    assert "random_init" in batch and "trained" not in batch
    with torch.no_grad():
        direct = exp.encoders["random_init"](batch["image"])
    torch.testing.assert_close(batch["random_init"], direct, rtol=1e-4, atol=1e-5)

    cached = exp.evaluate()
    uncached_exp = LandmarkExperiment(exp.config.replace(feature_cache=False), data=exp.datasets())
    uncached_exp.model.load_state_dict(exp.model.state_dict())
    uncached = uncached_exp.evaluate()
    torch.testing.assert_close(
        torch.tensor(cached["mi"].values), torch.tensor(uncached["mi"].values), rtol=0, atol=1e-4
    )


def test_feature_cache_on_disk_is_reused_and_survives_corruption(tmp_path):
    torch.manual_seed(0)
    encoder = freeze(ResNet18Encoder(image_size=(32, 32)))
    dataset = SyntheticFaces(6, seed=3)
    first = FeatureCache(tmp_path)
    table = first.features(encoder, dataset, "synthetic(6,3)", batch_size=4)
    assert table.shape == (6, 512) and first.misses == 1
    files = list(tmp_path.glob("features-*.safetensors"))
    assert len(files) == 1
    again = FeatureCache(tmp_path)
    torch.testing.assert_close(again.features(encoder, dataset, "synthetic(6,3)"), table)
    assert (again.hits, again.misses) == (1, 0)
    # another encoder (other weights) never reads this table
    torch.manual_seed(1)
    other = freeze(ResNet18Encoder(image_size=(32, 32)))
    assert not torch.allclose(again.features(other, dataset, "synthetic(6,3)"), table)
    # a truncated file is ignored and rewritten
    files[0].write_bytes(files[0].read_bytes()[:100])
    third = FeatureCache(tmp_path)
    torch.testing.assert_close(third.features(encoder, dataset, "synthetic(6,3)"), table)
    assert third.misses == 1
    with pytest.raises(ValueError, match="only frozen encoders"):
        third.features(ResNet18Encoder(), dataset, "synthetic(6,3)")


def test_a_short_training_run_and_the_mi_table(tiny_experiment):
    exp = tiny_experiment
    before = {k: v.clone() for k, v in exp.encoders["random_init"].state_dict().items()}
    trained_before = exp.encoders["trained"].backbone.conv1.weight.clone()
    log = exp.train()
    assert log.attrs["steps"] >= 2
    assert {"I(trained;nose)", "I(random_init;left_eye)"} <= set(log["name"])
    for key, value in exp.encoders["random_init"].state_dict().items():
        assert torch.equal(value, before[key])
    assert not torch.equal(exp.encoders["trained"].backbone.conv1.weight, trained_before)
    table = exp.evaluate()
    assert list(table.columns) == ["encoder", "landmark", "mi", "std_error"]
    assert len(table) == 4 and table["std_error"].gt(0).all()


def test_experiments_built_in_parallel_threads_get_their_seeded_weights():
    """The dashboard builds one experiment in a warm-up thread while a page loads another;
    both must draw exactly the weights their seed gives."""
    import threading

    from mist_core.data.features import module_fingerprint

    config = preset("demo-cpu", train_size=16, test_size=16, image_size=(40, 32))
    alone = module_fingerprint(LandmarkExperiment(config).encoders["random_init"])
    other = config.replace(seed=1)
    results: list[str] = []

    def build(cfg, out):
        for _ in range(3):
            experiment = LandmarkExperiment(cfg)
            if out is not None:
                out.append(module_fingerprint(experiment.encoders["random_init"]))

    threads = [
        threading.Thread(target=build, args=(config, results)),
        threading.Thread(target=build, args=(other, None)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [alone] * 3


def test_preparing_and_training_leave_torchs_global_generator_alone():
    """Background threads (warm-up, jobs) must not draw from the generator that another
    thread has just seeded to initialise an experiment's weights: preparing and evaluating
    never touch it, and training only seeds it (under the lock) and draws nothing."""
    config = preset(
        "demo-cpu",
        train_size=16,
        test_size=8,
        image_size=(40, 32),
        batch_size=8,
        epochs=1,
        valid_fraction=0.25,
    )
    experiment = LandmarkExperiment(config)
    before = torch.get_rng_state()
    experiment.prepare()
    experiment.evaluate()
    assert torch.equal(torch.get_rng_state(), before)
    experiment.train()
    torch.manual_seed(config.seed)
    seeded_state = torch.get_rng_state()
    torch.set_rng_state(before)
    experiment.train()
    assert torch.equal(torch.get_rng_state(), seeded_state)


def test_drawing_faces_in_worker_processes_gives_the_same_preloaded_images():
    from torch.utils.data import Subset

    from mist_core.experiment import _Preloaded

    faces = SyntheticFaces(260, seed=3)
    fast = _Preloaded(faces, (40, 32), batch_size=64)  # >= 256 items: worker processes
    plain = _Preloaded(Subset(faces, range(260)), (40, 32), batch_size=64)  # item by item
    assert torch.equal(fast.images, plain.images)
    assert fast.targets.keys() == plain.targets.keys()
    for name in plain.targets:
        assert torch.equal(fast.targets[name], plain.targets[name])


def test_test_images_are_made_when_first_needed():
    config = preset("demo-cpu", train_size=16, test_size=8, image_size=(40, 32))
    experiment = LandmarkExperiment(config)
    test = experiment.datasets()["test"]
    assert len(test) == 8 and test._dataset is None  # known length, nothing drawn yet
    experiment.prepare(("train",))
    assert test._dataset is None
    item = test[3]
    expected = SyntheticFaces(8, seed=config.seed + 1_000_003)[3]
    torch.testing.assert_close(item["nose"], expected["nose"])
    assert test._dataset is not None
