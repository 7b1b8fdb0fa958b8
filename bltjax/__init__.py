"""bltjax: a JAX/Flax implementation of Meta's Byte Latent Transformer.

A regular package (not a namespace one): tensorflow-datasets resolves builder code through
`importlib.resources.files("bltjax")`, which rejects the multiplexed path of an editable
namespace install.
"""
