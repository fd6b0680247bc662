"""Start one drone (ams_drone) in its own namespace.

    ros2 launch ams_ros drone.launch.py namespace:=drone1 camera_topic:=/cam/image_raw

Parameters come from params_file (default: the package's config/drone.yaml); the launch
arguments below override it. The camera topic is a remapping of the node's camera/image_raw.
On a machine without ROS's launch tools, `ams launch drone --namespace drone1` starts the same
node from the same file.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue


def generate_launch_description():
    config = os.path.join(get_package_share_directory('ams_ros'), 'config', 'drone.yaml')
    return LaunchDescription([
        DeclareLaunchArgument('namespace', default_value='drone1',
                              description='namespace of this drone (one per drone)'),
        DeclareLaunchArgument('client_id', default_value='',
                              description='client id; empty: the namespace'),
        DeclareLaunchArgument('camera_topic', default_value='camera/image_raw',
                              description='sensor_msgs/Image topic of the camera'),
        DeclareLaunchArgument('model_path', default_value='',
                              description="student ONNX to start from; empty: wait for the "
                                          "ground's snapshot"),
        DeclareLaunchArgument('params_file', default_value=config,
                              description='YAML parameters of ams_drone'),
        DeclareLaunchArgument('use_sim_time', default_value='false',
                              description='take time from /clock (bag replay, simulation)'),
        Node(
            package='ams_ros',
            executable='ams_drone',
            name='ams_drone',
            namespace=LaunchConfiguration('namespace'),
            output='screen',
            parameters=[
                LaunchConfiguration('params_file'),
                {
                    'client_id': ParameterValue(LaunchConfiguration('client_id'),
                                                value_type=str),
                    'model_path': ParameterValue(LaunchConfiguration('model_path'),
                                                 value_type=str),
                    'use_sim_time': ParameterValue(LaunchConfiguration('use_sim_time'),
                                                   value_type=bool),
                },
            ],
            remappings=[('camera/image_raw', LaunchConfiguration('camera_topic'))],
        ),
    ])
