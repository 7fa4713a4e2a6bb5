"""Techniques as pure functions over (config, params) or as products to inject.

Importing the package registers the products transforms define (fake quantization),
so a model whose config names them (a QAT run's model.json) rebuilds anywhere.
"""
from research.transforms import quantize  # pylint: disable=unused-import
