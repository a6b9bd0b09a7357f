"""The shared vocabulary at the bottom of the layers: job states, typed job events, a job's outcome and
the events of a quick answer. Standard library only; nothing here imports another part of the assistant."""
