//! flowgate: gates inbound workflow webhooks inside Envoy.
