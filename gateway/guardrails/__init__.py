"""Guardrails: what must not reach a model or a client (issue #15).

detectors  the built-in detectors: e-mail addresses, phone numbers, payment cards (Luhn),
           IBANs (mod 97), IP addresses, API keys and tokens, private key blocks; each
           with the longest text it can match, which bounds a stream's look-back window
"""
