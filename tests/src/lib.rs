//! Test support: starting the real binaries and peers on free ports, in temp dirs.
