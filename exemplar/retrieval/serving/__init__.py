"""What a process serves: snapshots over segments, the selection service and its strategies."""
