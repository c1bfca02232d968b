"""The default deployment: four self-hosted model services on 11400-11403.

The demo runs mock services under these names and ports; ops/config/gateway.yaml is the same
deployment as a production configuration file.
"""

from __future__ import annotations

from actors.backend.settings import BackendSettings
from actors.router.rules import RoutingRule, RuleCondition, VirtualModelSettings
from gateway.process.config import GatewayModel

DEMO_API_KEY = "sk-citadel-demo"
DEMO_ADMIN_KEY = "sk-citadel-demo-admin"

DEFAULT_MODELS = (
    GatewayModel(
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
    GatewayModel(
        name="hermes-2-pro",
        aliases=("hermes-2", "hermes"),
        context_window=8192,
        owned_by="nousresearch",
        context_fallback="mixtral-8x7b",
        fallbacks=("mixtral-8x7b",),
        backends=(
            BackendSettings(
                url="http://127.0.0.1:11401", model="NousResearch/Hermes-2-Pro-Mistral-7B"
            ),
        ),
    ),
    GatewayModel(
        name="openchat-3.5",
        aliases=("openchat",),
        context_window=8192,
        owned_by="openchat",
        context_fallback="mixtral-8x7b",
        fallbacks=("hermes-2-pro", "mixtral-8x7b"),
        backends=(
            BackendSettings(url="http://127.0.0.1:11402", model="openchat/openchat-3.5-0106"),
        ),
    ),
    GatewayModel(
        name="phi-3-mini",
        aliases=("phi-3", "phi"),
        context_window=4096,
        owned_by="microsoft",
        context_fallback="mixtral-8x7b",
        fallbacks=("openchat-3.5", "hermes-2-pro", "mixtral-8x7b"),
        backends=(
            BackendSettings(url="http://127.0.0.1:11403", model="microsoft/Phi-3-mini-4k-instruct"),
        ),
    ),
)

# "auto": the cheapest model that fits and is available; tools and JSON mode go to the model
# trained for function calling first.
DEFAULT_VIRTUAL_MODELS = (
    VirtualModelSettings(
        name="auto",
        candidates=("phi-3-mini", "openchat-3.5", "hermes-2-pro", "mixtral-8x7b"),
        rules=(
            RoutingRule(
                name="tools",
                when=RuleCondition(has_tools=True),
                prefer=("hermes-2-pro", "mixtral-8x7b"),
            ),
            RoutingRule(
                name="json",
                when=RuleCondition(json_mode=True),
                prefer=("hermes-2-pro", "mixtral-8x7b"),
            ),
        ),
    ),
)
