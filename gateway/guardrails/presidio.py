"""An optional detector: Microsoft Presidio's analyzer, where it is installed (never required).

Presidio finds what the built-ins do not: names, addresses, national id numbers, with its
recognizers and a spaCy model. A rule names the entities it wants:

```yaml
- id: people
  presidio: {entities: [PERSON, US_SSN], model: en_core_web_lg, score_threshold: 0.6}
  direction: both
  action: redact          # each match becomes its entity type: [PERSON], [US_SSN]
```

An analyzer is loaded once per spaCy model and language (loading a model takes seconds),
and kept for the gateway's life: a reload reuses it. Presidio cannot say that a text's end
may begin a match, so in a stream a Presidio rule holds back its last `max_length`
characters (32 unless set): the time to first token grows by that much text.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from gateway.guardrails.detectors import Span

INSTALL_HINT = (
    "the presidio detector needs presidio-analyzer: pip install 'citadel-gateway[presidio]'"
)


def installed() -> bool:
    return importlib.util.find_spec("presidio_analyzer") is not None


class PresidioEngines:
    """Presidio analyzers by (spaCy model, language), each loaded on first use."""

    __slots__ = ("_engines",)

    def __init__(self) -> None:
        self._engines: dict[tuple[str, str], Any] = {}

    def engine(self, model: str, language: str) -> Any:
        found = self._engines.get((model, language))
        if found is None:
            found = self._engines[(model, language)] = _load(model, language)
        return found

    def finder(
        self, model: str, language: str, entities: tuple[str, ...], score_threshold: float
    ) -> Any:
        engine = self.engine(model, language)
        wanted = list(entities)

        def find(text: str, digits: int, clusters: list[tuple[int, int]]) -> list[Span]:
            found = engine.analyze(
                text=text, language=language, entities=wanted, score_threshold=score_threshold
            )
            return [Span(result.start, result.end, result.entity_type) for result in found]

        return find


def _load(model: str, language: str) -> Any:
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import NlpEngineProvider

    nlp = NlpEngineProvider(
        nlp_configuration={
            "nlp_engine_name": "spacy",
            "models": [{"lang_code": language, "model_name": model}],
        }
    ).create_engine()
    return AnalyzerEngine(nlp_engine=nlp, supported_languages=[language])
