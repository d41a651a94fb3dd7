"""Errors raised while loading models or turning inputs into vectors. They know nothing of HTTP."""


class ModelError(Exception):
    """Base class for model-layer errors."""


class ModelLoadError(ModelError):
    """The model or its weights could not be loaded; the message says what to set."""


class ImageDecodeError(ModelError):
    """The bytes are not an image this service accepts."""


class UnsupportedImageFormatError(ImageDecodeError):
    """The bytes are an image, but of a format outside the allow-list."""


class ImageTooLargeError(ImageDecodeError):
    """The image declares more pixels than allowed (decompression-bomb guard)."""


class EmptyTextError(ModelError):
    """A text to encode is empty or only whitespace."""
