"""Subprocess entry for trainer tests: python run_trainer.py CONFIG_JSON WORKDIR OUT_NPZ."""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import ml_collections  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
from flax import traverse_util  # pylint: disable=wrong-import-position

from research.train.trainer import train_and_evaluate  # pylint: disable=wrong-import-position


def main():
  config = ml_collections.ConfigDict(json.loads(open(sys.argv[1]).read()))
  result = train_and_evaluate(config, sys.argv[2])
  flat = traverse_util.flatten_dict(result['params'], sep='/')
  np.savez(sys.argv[3], **{k: np.asarray(v) for k, v in flat.items()})
  with open(sys.argv[3] + '.json', 'w') as f:
    json.dump({'final': result['final'], 'best': result['best']}, f)


if __name__ == '__main__':
  main()
