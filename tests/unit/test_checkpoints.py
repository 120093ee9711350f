"""An experiment kept in a run: typed configs (old runs migrated), checkpoint extra keys,
capture, save and restore."""

from __future__ import annotations

import json

import pytest
import torch

from mist_core.checkpoints import (
    EXPERIMENT_CONFIG,
    CheckpointExtra,
    capture_checkpoint,
    load_config,
    load_experiment,
    restore_checkpoint,
    run_store,
)
from mist_core.experiment import ExperimentConfig, LandmarkExperiment, preset
from mist_core.runs import RunFileError, RunStore
from mist_core.training import TrainState

torch.set_num_threads(1)

CONFIG = preset(
    "demo-cpu",
    train_size=8,
    test_size=8,
    image_size=(32, 32),
    encoders=("random_init", "trained"),
    landmarks=("nose",),
)


def test_configs_are_typed_and_old_runs_get_the_precision_they_ran_with(tmp_path):
    store = run_store(tmp_path / "runs")
    run = store.create(CONFIG, name="typed")
    assert run.config() == CONFIG and store.open("typed").config() == CONFIG
    assert store.list()[0].config == CONFIG
    with pytest.raises(TypeError, match="config must be an ExperimentConfig"):
        store.create(CONFIG.to_dict(), name="untyped")

    saved = CONFIG.to_dict()
    del saved["precision"]  # a run written before the field existed
    (run.path / "config.json").write_text(json.dumps(saved))
    assert store.open("typed").config() == CONFIG.replace(precision="float32")
    assert load_config({**saved, "precision": "bfloat16"}).precision == "bfloat16"
    assert EXPERIMENT_CONFIG.from_json(CONFIG.to_dict()) == CONFIG

    (run.path / "config.json").write_text(json.dumps({**saved, "epochs": 0}))
    with pytest.raises(RunFileError, match="config.json is not a valid config: epochs must be"):
        store.open("typed").config()


def test_a_plain_store_keeps_configs_as_json_objects(tmp_path):
    plain = RunStore(tmp_path / "runs")
    run = plain.create({"anything": [1, 2]}, name="plain")
    assert plain.open("plain").config() == run.config() == {"anything": [1, 2]}
    with pytest.raises(TypeError, match="config must be a mapping"):
        plain.create(CONFIG, name="typed")


def _state(experiment: LandmarkExperiment, step: int) -> TrainState:
    parameters = [p for p in experiment.training_model().parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(parameters, lr=1e-3)
    loss = sum(p.square().sum() for p in parameters)
    loss.backward()
    optimizer.step()
    return TrainState(
        estimator=experiment.training_model(),
        optimizer=optimizer,
        step=step,
        epoch=1,
        batches_in_epoch=2,
        reason="stopped",
    )


def test_capture_save_and_restore_a_checkpoint(tmp_path):
    experiment = LandmarkExperiment(CONFIG)
    state = _state(experiment, step=7)
    pending = capture_checkpoint(experiment, state)
    with torch.no_grad():  # training goes on after the capture: the copy must not move
        for p in experiment.pair_estimators.parameters():
            p.add_(1.0)
    run = run_store(tmp_path / "runs").create(CONFIG, name="ckpt")
    pending.save(run)

    meta = json.loads((run.checkpoint_dir / "step-00000007.json").read_text())
    assert meta["extra"] == {
        "batches_in_epoch": 2,
        "reason": "stopped",
        "frozen_fingerprints": experiment.frozen_fingerprints(),
    }
    assert set(experiment.frozen_fingerprints()) == {"random_init"}
    assert not any(k.startswith("transforms.random_init.") for k in pending.model_state)

    fresh = LandmarkExperiment(CONFIG)
    resume = restore_checkpoint(fresh, run)
    assert (resume.step, resume.epoch, resume.batches_in_epoch) == (7, 1, 2)
    assert resume.optimizer_state is not None and resume.optimizer_state["state"]
    for key, value in pending.model_state.items():
        torch.testing.assert_close(fresh.model.state_dict()[key], value, rtol=0, atol=0)

    # a run opened from a plain store reads the same experiment
    loaded = load_experiment(RunStore(tmp_path / "runs").open("ckpt"))
    assert isinstance(loaded.config, ExperimentConfig) and not loaded.model.training
    for key, value in pending.model_state.items():
        torch.testing.assert_close(loaded.model.state_dict()[key], value, rtol=0, atol=0)


def test_a_checkpoint_never_meets_other_frozen_weights(tmp_path):
    experiment = LandmarkExperiment(CONFIG)
    pending = capture_checkpoint(experiment, _state(experiment, step=1))
    run = run_store(tmp_path / "runs").create(CONFIG, name="frozen")
    pending.save(run)
    meta_path = run.checkpoint_dir / "step-00000001.json"
    meta = json.loads(meta_path.read_text())
    meta["extra"]["frozen_fingerprints"] = {"random_init": "0" * 64}
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"frozen encoder\(s\) \['random_init'\]"):
        restore_checkpoint(LandmarkExperiment(CONFIG), run)


def test_checkpoints_saved_without_extra_keys_still_restore():
    assert CheckpointExtra.from_json({}) == CheckpointExtra(0, None, None)
    assert CheckpointExtra.from_json(None) == CheckpointExtra()
    extra = CheckpointExtra(3, "epoch", {"random_init": "ab"})
    assert CheckpointExtra.from_json(extra.to_json()) == extra
