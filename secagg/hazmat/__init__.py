"""The sharp parts: PRG, key agreement, AEAD, signatures, Shamir. See docs/protocol.md for the spec."""
