//! Integration tests of dot-proxy-operator: the generated CRD against its committed copies,
//! the example resource end to end through the proxy's own loader, the `crd` and `render`
//! commands, and a 5,000-node cluster.

mod cli;
mod crd;
mod example;
mod scale;
mod support;
