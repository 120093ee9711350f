"""The landmark experiment: typed config, the seed's model, loaders and the feature cache."""

from __future__ import annotations

import json

import pytest
import torch

from mist_core import freeze, is_frozen
from mist_core.data import FeatureCache, SyntheticFaces
from mist_core.data.images import resize_images
from mist_core.encoders import ResNet18Encoder
from mist_core.experiment import (
    PRESETS,
    ExperimentConfig,
    LandmarkExperiment,
    preset,
)
from mist_core.results import PairEstimate

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
        ({"estimator": "infonce"}, r"unknown estimator 'infonce'.*valid names: doe, club, l1out$"),
        ({"train_size": 1}, r"train_size must be an integer in \[2, 1000000\]"),
        ({"image_size": (16, 16)}, "image_size"),
        ({"epochs": 0}, r"epochs must be an integer in \[1, 1000\], got 0"),
        ({"lr": 0.0}, r"lr must be a number in \(0, 1\], got 0.0"),
    ],
)
def test_config_errors_name_the_field(changes, message):
    with pytest.raises(ValueError, match=message):
        preset("demo-cpu", **changes)


#: Each field with a value of the wrong type and one out of range, and what the error says.
BAD_FIELDS = [
    ("dataset", 3, "dataset must be a string, got 3"),
    ("dataset", "imagenet", "dataset must be one of"),
    ("celeba_root", ["data"], r"celeba_root must be a folder path \(a string\) or None"),
    ("train_size", "abc", r"train_size must be an integer in \[2, 1000000\] \(or None"),
    ("train_size", 2.5, r"train_size must be an integer .* got 2.5"),
    ("train_size", 10_000_000, r"train_size must be an integer in \[2, 1000000\].*10000000"),
    ("test_size", True, r"test_size must be an integer in \[2, 1000000\].* got True"),
    ("test_size", 1, r"test_size must be an integer in \[2, 1000000\].* got 1"),
    ("valid_fraction", "0.1", r"valid_fraction must be a number in \[0, 0.5\), got '0.1'"),
    ("valid_fraction", 0.5, r"valid_fraction must be a number in \[0, 0.5\), got 0.5"),
    ("image_size", "64x52", r"image_size must be \(height, width\) in pixels"),
    ("image_size", (64, 52, 3), r"image_size must be \(height, width\).*got \(64, 52, 3\)"),
    ("image_size", (64.5, 52), r"height in \[32, 218\] and width in \[32, 178\]"),
    ("image_size", [100000, 100000], r"width in \[32, 178\], got \[100000, 100000\]"),
    ("image_size", (31, 52), r"height in \[32, 218\]"),
    ("encoders", 3, "encoders must be a list of names, got 3"),
    ("encoders", ("trained", "trained"), r"must not repeat a name; repeated: \['trained'\]"),
    ("landmarks", ("nose", 1), "landmarks must be a list of names"),
    ("landmarks", (), "landmarks must be among"),
    ("estimator", None, "estimator must be a string, got None"),
    ("hidden_dims", 128, r"hidden_dims must be a list of at most 8 layer widths"),
    ("hidden_dims", (128, 0), r"each an integer in \[1, 4096\], got \(128, 0\)"),
    ("hidden_dims", (64,) * 9, r"at most 8 layer widths"),
    ("marginal_hidden_dims", ("64",), r"marginal_hidden_dims must be a list"),
    ("marginal_hidden_dims", (100_000,), r"\[1, 4096\], got \(100000,\)"),
    ("n_transforms", 1.5, r"n_transforms must be an integer in \[1, 16\], got 1.5"),
    ("n_transforms", 17, r"n_transforms must be an integer in \[1, 16\], got 17"),
    ("batch_size", "abc", r"batch_size must be an integer in \[2, 4096\], got 'abc'"),
    ("batch_size", 1e9, r"batch_size must be an integer in \[2, 4096\], got 1000000000.0"),
    ("batch_size", 1, r"batch_size must be an integer in \[2, 4096\], got 1"),
    ("epochs", 1.5, r"epochs must be an integer in \[1, 1000\], got 1.5"),
    ("epochs", 10**6, r"epochs must be an integer in \[1, 1000\], got 1000000"),
    ("lr", "fast", r"lr must be a number in \(0, 1\], got 'fast'"),
    ("lr", float("nan"), r"lr must be a number in \(0, 1\], got nan"),
    ("lr", 2.0, r"lr must be a number in \(0, 1\], got 2.0"),
    ("lr_schedule", "cosine", "lr_schedule must be one of constant, one-cycle; got 'cosine'"),
    ("lr_schedule", 1, "lr_schedule must be a string, got 1"),
    ("early_stopping", "yes", "early_stopping must be true or false, got 'yes'"),
    ("early_stopping", 1, "early_stopping must be true or false, got 1"),
    ("device", "tpu", r"device must be one of auto, cpu, cuda, cuda:N .*got 'tpu'"),
    ("device", "cuda:x", "device must be one of"),
    ("device", 0, "device must be one of"),
    ("precision", 16, "precision must be a string, got 16"),
    ("precision", "fp16", "precision must be one of"),
    ("seed", "0", r"seed must be an integer in \[0, 4294967295\], got '0'"),
    ("seed", -1, r"seed must be an integer in \[0, 4294967295\], got -1"),
    ("feature_cache", None, "feature_cache must be true or false, got None"),
    ("preload", "false", "preload must be true or false, got 'false'"),
    ("num_workers", 0.5, r"num_workers must be an integer in \[0, 64\], got 0.5"),
    ("num_workers", 1000, r"num_workers must be an integer in \[0, 64\], got 1000"),
]


def test_every_field_is_checked():
    from dataclasses import fields

    assert {f.name for f in fields(ExperimentConfig)} == {name for name, _, _ in BAD_FIELDS}


@pytest.mark.parametrize(("name", "value", "message"), BAD_FIELDS)
def test_config_fields_are_type_and_range_checked_at_construction(name, value, message):
    with pytest.raises(ValueError, match=message):
        preset("demo-cpu", **{name: value})
    # the same through JSON (the CLI's --set and saved runs) and through the constructor
    data = {**preset("demo-cpu").to_dict(), name: value}
    with pytest.raises(ValueError, match=message):
        ExperimentConfig.from_dict(data)


def test_config_accepts_what_json_gives_and_normalises_it():
    config = ExperimentConfig.from_json(
        json.dumps(
            {
                **preset("demo-cpu").to_dict(),
                "epochs": 3.0,  # integral floats become ints
                "image_size": [64.0, 52],
                "hidden_dims": [16, 8.0],
                "marginal_hidden_dims": [],
                "encoders": "trained",  # one name
                "device": "cuda:1",
                "lr": 1,
                "seed": 4294967295,
            }
        )
    )
    assert config.epochs == 3 and type(config.epochs) is int
    assert config.image_size == (64, 52) and all(type(v) is int for v in config.image_size)
    assert config.hidden_dims == (16, 8) and config.marginal_hidden_dims == ()
    assert config.encoders == ("trained",)
    assert config.lr == 1.0 and type(config.lr) is float
    assert hash(config) == hash(ExperimentConfig.from_json(config.to_json()))
    for device in ("auto", "cpu", "cuda", "cuda:0", "cuda:12", "mps"):
        assert preset("demo-cpu", device=device).device == device
    # the largest accepted values are accepted
    big = preset("demo-cpu", train_size=1_000_000, image_size=(218, 178), batch_size=4096)
    assert big.train_size == 1_000_000
    assert preset("seed").train_size is None  # None: the whole split (CelebA)


def test_unknown_fields_and_bad_json_are_refused():
    with pytest.raises(ValueError, match=r"unknown config field\(s\) \['epoch'\]; valid fields"):
        ExperimentConfig.from_dict({"epoch": 3})
    with pytest.raises(ValueError, match="not valid JSON"):
        ExperimentConfig.from_json("{epochs: 3")
    with pytest.raises(ValueError, match="unknown preset 'demo'"):
        preset("demo")


def test_the_seed_model_structure(tiny_experiment):
    exp = tiny_experiment
    estimators = exp.pair_estimators.estimators
    assert list(estimators) == [
        "random_init;left_eye",
        "trained;left_eye",
        "random_init;nose",
        "trained;nose",
    ]
    assert estimators["random_init;nose"].q_Y is estimators["trained;nose"].q_Y
    assert estimators["random_init;nose"].q_Y is not estimators["random_init;left_eye"].q_Y
    assert is_frozen(exp.encoders["random_init"]) and not is_frozen(exp.encoders["trained"])
    assert exp.pair_estimators.infomax_gradient == {
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
    # images are kept as uint8 at the encoder's size: within half a grey level of the float
    # resize, which moves the features by well under 1%
    assert preloaded.images.dtype == torch.uint8 and preloaded[5]["image"].dtype == torch.float32
    assert (full - small).norm() / full.norm() < 0.01
    torch.testing.assert_close(
        resize_images(item["image"].unsqueeze(0), (40, 32))[0],
        preloaded[5]["image"],
        rtol=0,
        atol=0.5 / 255 + 1e-6,
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
    estimates = exp.estimates()
    assert all(isinstance(e, PairEstimate) for e in estimates)
    assert [(e.representation, e.target, e.mi, e.std_error) for e in estimates] == list(
        table.itertuples(index=False, name=None)
    )
    assert {(e.n, e.estimator) for e in estimates} == {(exp.config.test_size, "doe")}


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


def test_preparation_stops_within_two_seconds_and_can_be_redone():
    import threading
    import time

    from mist_core.experiment import PreparationStopped

    config = preset("demo-cpu", train_size=700, test_size=20, image_size=(40, 32))
    stop = threading.Event()
    experiment = LandmarkExperiment(config, stop_event=stop)
    timer = threading.Timer(1.0, stop.set)
    start = time.monotonic()
    timer.start()
    with pytest.raises(PreparationStopped):
        experiment.prepare()
    took = time.monotonic() - start - 1.0
    timer.join()
    assert took < 2.0, f"the stop took {took:.2f} s"
    assert experiment.data is None  # nothing half-made is kept
    # the test images (made on first use) and the features stop too
    stop.clear()
    small = LandmarkExperiment(preset("demo-cpu", **TINY), stop_event=stop)
    small.datasets()  # the training images
    stop.set()
    with pytest.raises(PreparationStopped, match="drawing faces stopped"):
        small.prepare(("test",))
    assert small.datasets()["test"]._dataset is None
    stop.clear()
    small.prepare(("test",))
    assert small.datasets()["test"]._dataset is not None


def test_compute_features_stops_between_batches():
    import threading

    from mist_core.data import compute_features
    from mist_core.experiment import PreparationStopped

    encoder = freeze(ResNet18Encoder(image_size=(32, 32)))
    faces = SyntheticFaces(4, seed=1)
    stop = threading.Event()
    stop.set()
    with pytest.raises(PreparationStopped, match="computing features stopped"):
        compute_features(encoder, faces, batch_size=2, stop_event=stop)
    with pytest.raises(PreparationStopped):
        FeatureCache().features(encoder, faces, "synthetic(4,1)", stop_event=stop)
    table = compute_features(encoder, faces, batch_size=3)  # 3 + 1: filled in place
    assert table.shape == (4, 512) and table.dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(table[3:], encoder(faces[3]["image"].unsqueeze(0)))


def test_feature_cache_keeps_the_most_recently_used_tables():
    from mist_core.data.features import MAX_TABLES

    assert FeatureCache().max_tables == MAX_TABLES == 16
    encoder = freeze(ResNet18Encoder(image_size=(32, 32)))
    faces = SyntheticFaces(2, seed=1)
    cache = FeatureCache(max_tables=2)
    cache.features(encoder, faces, "a")
    cache.features(encoder, faces, "b")
    cache.features(encoder, faces, "a")  # a is now the most recently used
    cache.features(encoder, faces, "c")  # b goes
    assert len(cache) == 2 and (cache.hits, cache.misses) == (1, 3)
    cache.features(encoder, faces, "a")
    assert (cache.hits, cache.misses) == (2, 3)
    cache.features(encoder, faces, "b")
    assert (cache.hits, cache.misses) == (2, 4) and len(cache) == 2
    unbounded = FeatureCache(max_tables=None)
    for name in "abc":
        unbounded.features(encoder, faces, name)
    assert len(unbounded) == 3
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="max_tables must be a positive integer or None"):
            FeatureCache(max_tables=bad)
