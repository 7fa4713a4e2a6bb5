"""Techniques as pure functions over (config, params) or as products to inject.

Importing the package registers what transforms define for the model's seams: the
fake-quantizing products and hooks (QAT), the integer-only products and non-linearities,
the int8 / int4 and LoRA projection kinds,
so a model whose config names them (a run's model.json) rebuilds anywhere.
"""
from research.transforms import integer_only, lora, qat, quantize  # pylint: disable=unused-import
