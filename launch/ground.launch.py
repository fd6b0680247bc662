"""Start the ground station (ams_ground): it serves every drone it discovers.

    ros2 launch ams_ros ground.launch.py
    ros2 launch ams_ros ground.launch.py params_file:=/path/to/ground_cpu.yaml
    ros2 launch ams_ros ground.launch.py profile:=paper

Parameters come from params_file (default: the package's config/ground.yaml, the project's
settings for a GPU; config/ground_cpu.yaml is the CPU variant), then from the overlay
config/profiles/<profile>.yaml when profile is set (paper: the paper's AMS). Several ground
nodes on several machines split a fleet with shard_index / shard_count. Without ROS's launch
tools, `ams launch ground` starts the same node from the same file.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue


def ground_node(context):
    files = [LaunchConfiguration('params_file').perform(context)]
    profile = LaunchConfiguration('profile').perform(context)
    if profile:  # an overlay: it sets only where the profile departs from the base file
        files.append(os.path.join(get_package_share_directory('ams_ros'), 'config', 'profiles',
                                  profile + '.yaml'))
    return [Node(
        package='ams_ros',
        executable='ams_ground',
        name='ams_ground',
        namespace=LaunchConfiguration('namespace'),
        output='screen',
        parameters=[
            *files,
            {'use_sim_time': ParameterValue(LaunchConfiguration('use_sim_time'),
                                            value_type=bool)},
        ],
    )]


def generate_launch_description():
    config = os.path.join(get_package_share_directory('ams_ros'), 'config', 'ground.yaml')
    return LaunchDescription([
        DeclareLaunchArgument('params_file', default_value=config,
                              description='YAML parameters of ams_ground'),
        DeclareLaunchArgument('namespace', default_value='',
                              description="the ground node's own namespace (drone topics are "
                                          'absolute, so this does not change what it serves)'),
        DeclareLaunchArgument('use_sim_time', default_value='false',
                              description='take time from /clock (bag replay, simulation)'),
        DeclareLaunchArgument('profile', default_value='',
                              description="AMS settings overlay: 'paper' for the paper's "
                                          "algorithm; empty: params_file's"),
        OpaqueFunction(function=ground_node),
    ])
