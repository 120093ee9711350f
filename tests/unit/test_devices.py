"""resolve_device and device_key: one parsing of device settings."""

from __future__ import annotations

import pytest
import torch

from mist_core.devices import device_key, resolve_device


def test_resolve_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(None) == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ValueError, match="no CUDA device is available"):
        resolve_device("cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)


def test_device_key(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert device_key("auto") == "cuda:0"
    assert device_key("cuda") == "cuda:0"  # both spellings share one queue
    assert device_key("cuda:1") == "cuda:1"
    assert device_key("cpu") == "cpu"
    assert device_key("not a device") == "not a device"  # the config check reports it
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device_key("auto") == "cpu"
    assert device_key("cuda") == "cuda:0"  # a key, not a check: no error here
