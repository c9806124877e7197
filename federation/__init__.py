"""govnode federation protocol: canonical JSON, signing, certificates, request auth, envelopes."""
