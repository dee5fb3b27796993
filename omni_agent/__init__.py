"""omni-agent: voice and text agents with a Thinker, an intervenable bus and a Talker."""
