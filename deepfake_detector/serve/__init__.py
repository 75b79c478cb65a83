"""HTTP API and upload page over the Python predict API (``deepfake-detector serve``).

``create_app(detector, settings)`` builds the FastAPI app; ``ServeSettings`` holds every limit.
FastAPI is imported only when this package is used, never by the rest of the library.
"""

from .settings import TOKEN_ENV, ServeSettings, token_from_env

__all__ = ["TOKEN_ENV", "ServeSettings", "create_app", "token_from_env"]


def __getattr__(name: str):
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(name)
