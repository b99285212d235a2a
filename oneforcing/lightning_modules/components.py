"""The codec and text encoder a module is built with: the toy world's (the default) or Wan2.1's."""

from __future__ import annotations

from oneforcing.models.codecs import WanVAECodec
from oneforcing.models.text_encoders import UMT5TextEncoder
from oneforcing.toy.codec import SpaceToDepthCodec
from oneforcing.toy.text_encoder import ToyTextEncoder

LatentCodec = SpaceToDepthCodec | WanVAECodec
TextEncoder = ToyTextEncoder | UMT5TextEncoder
