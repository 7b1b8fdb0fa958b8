"""bltjax.cpu_tuning: the batch-1 XLA:CPU flag is set before JAX starts, never over the user's."""

from bltjax import cpu_tuning


def test_batch_one_turns_ynnpack_dots_off(monkeypatch):
  monkeypatch.setattr(cpu_tuning, "backend_started", lambda: False)
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
  assert cpu_tuning.tune_for_decoding(1)
  import os

  assert os.environ["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=2",
                                             cpu_tuning.NO_YNN_DOTS]


def test_larger_batches_user_flags_and_started_backends_are_left_alone(monkeypatch):
  import os

  import jax

  jax.devices()  # the backend has started: a flag would change nothing
  assert cpu_tuning.backend_started()
  monkeypatch.setenv("XLA_FLAGS", "")
  assert not cpu_tuning.tune_for_decoding(1) and os.environ["XLA_FLAGS"] == ""
  monkeypatch.setattr(cpu_tuning, "backend_started", lambda: False)

  monkeypatch.delenv("XLA_FLAGS", raising=False)
  assert not cpu_tuning.tune_for_decoding(8)
  assert "XLA_FLAGS" not in os.environ
  user = "--xla_cpu_experimental_ynn_fusion_type=dot"
  monkeypatch.setenv("XLA_FLAGS", user)
  assert not cpu_tuning.tune_for_decoding(1)
  assert os.environ["XLA_FLAGS"] == user
