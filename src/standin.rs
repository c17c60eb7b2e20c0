//! STUB — to be written: loopback stand-ins for the partner APIs (dev mode and tests).
