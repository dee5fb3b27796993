"""HTTP services: the Thinker, Talker and agent servers."""
