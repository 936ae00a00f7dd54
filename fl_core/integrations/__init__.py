"""Carriers for the protocol: ``transport`` (any carrier of bytes, no framework) and ``flower``
(Flower's Message API; needs the ``secagg[flower]`` extra). Import the submodule you use: this
package imports neither, so ``fl_core`` never needs flwr."""
