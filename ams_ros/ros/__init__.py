"""ROS 2 adapters: message conversion and the thin nodes that drive the engine over DDS."""
