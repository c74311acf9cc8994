# The benchmark peer's interface: the daemon's `status` reduced to the two fields callers read.
@0xd70d693620e39fa5;

interface Status {
  status @0 () -> (epoch :UInt64, graphHash :Text);
}
