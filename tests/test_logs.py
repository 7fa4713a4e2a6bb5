"""Scripts print progress, results and real warnings: library chatter stays below them."""
import logging

from research import logs


def test_setup_keeps_the_library_at_info_and_the_chatty_ones_at_warning():
  logs.setup()
  assert logging.getLogger().level == logging.INFO
  for name in ('absl', 'jax._src.xla_bridge', 'tensorflow'):
    assert logging.getLogger(name).getEffectiveLevel() == logging.WARNING, name
  # JAX's search for a TPU backend is an INFO record of its own logger: not shown.
  assert not logging.getLogger('jax._src.xla_bridge').isEnabledFor(logging.INFO)
  assert logging.getLogger('research.train.trainer').isEnabledFor(logging.INFO)
