"""The default deployment: four self-hosted model services on 11400-11403.

The demo runs mock services under these names and ports; ops/config/gateway.yaml is the same
deployment as a production configuration file.
"""

from __future__ import annotations

from actors.backend import BackendSettings
from actors.router import ModelSettings

DEMO_API_KEY = "sk-citadel-demo"

DEFAULT_MODELS = (
    ModelSettings(
        name="mixtral-8x7b",
        aliases=("mixtral",),
        context_window=32768,
        owned_by="mistralai",
        backends=(
            BackendSettings(
                url="http://127.0.0.1:11400", model="mistralai/Mixtral-8x7B-Instruct-v0.1"
            ),
        ),
    ),
    ModelSettings(
        name="hermes-2-pro",
        aliases=("hermes-2", "hermes"),
        context_window=8192,
        owned_by="nousresearch",
        backends=(
            BackendSettings(
                url="http://127.0.0.1:11401", model="NousResearch/Hermes-2-Pro-Mistral-7B"
            ),
        ),
    ),
    ModelSettings(
        name="openchat-3.5",
        aliases=("openchat",),
        context_window=8192,
        owned_by="openchat",
        backends=(
            BackendSettings(url="http://127.0.0.1:11402", model="openchat/openchat-3.5-0106"),
        ),
    ),
    ModelSettings(
        name="phi-3-mini",
        aliases=("phi-3", "phi"),
        context_window=4096,
        owned_by="microsoft",
        backends=(
            BackendSettings(url="http://127.0.0.1:11403", model="microsoft/Phi-3-mini-4k-instruct"),
        ),
    ),
)
