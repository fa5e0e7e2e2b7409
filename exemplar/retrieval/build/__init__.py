"""Sources, sharded resumable builds, and the jobs they (and compaction, adapters) run as."""
