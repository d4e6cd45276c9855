"""lenet5: LeNet-5 as published by LeCun, Bottou, Bengio and Haffner (1998), its popular
PyTorch variants, and the tools to train, evaluate and ship them.

`import lenet5` stays light: heavy optional dependencies are imported where they are used.
"""

__version__ = "0.1.0"
