"""The whole AMS loop on one machine: synthetic camera, drone and ground (CPU settings).

    ros2 launch ams_ros demo.launch.py
    ros2 launch ams_ros demo.launch.py seed:=1004 ground_params_file:=/path/to/ground.yaml

The camera flies the synthetic flight `seed` and publishes it in the drone's namespace; the
ground's synthetic teacher labels the same flight. Without ROS's launch tools,
`ams launch demo` starts the same three nodes from the same files.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue


def generate_launch_description():
    share = get_package_share_directory('ams_ros')
    namespace = LaunchConfiguration('namespace')
    seed = ParameterValue(LaunchConfiguration('seed'), value_type=int)
    use_sim_time = ParameterValue(LaunchConfiguration('use_sim_time'), value_type=bool)
    return LaunchDescription([
        DeclareLaunchArgument('namespace', default_value='drone1',
                              description='namespace of the demo drone'),
        DeclareLaunchArgument('seed', default_value='1003',
                              description='synthetic flight the camera flies and the teacher '
                                          'labels'),
        DeclareLaunchArgument('model_path', default_value='',
                              description="student ONNX the drone starts from; empty: the "
                                          "ground's snapshot"),
        DeclareLaunchArgument('drone_params_file',
                              default_value=os.path.join(share, 'config', 'drone.yaml'),
                              description='YAML parameters of ams_drone'),
        DeclareLaunchArgument('ground_params_file',
                              default_value=os.path.join(share, 'config', 'ground_cpu.yaml'),
                              description='YAML parameters of ams_ground'),
        DeclareLaunchArgument('use_sim_time', default_value='false',
                              description='take time from /clock'),
        Node(
            package='ams_ros',
            executable='ams_camera',
            name='ams_camera',
            namespace=namespace,
            output='screen',
            parameters=[{'seed': seed, 'use_sim_time': use_sim_time}],
        ),
        Node(
            package='ams_ros',
            executable='ams_drone',
            name='ams_drone',
            namespace=namespace,
            output='screen',
            parameters=[
                LaunchConfiguration('drone_params_file'),
                {'model_path': ParameterValue(LaunchConfiguration('model_path'), value_type=str),
                 'use_sim_time': use_sim_time},
            ],
        ),
        Node(
            package='ams_ros',
            executable='ams_ground',
            name='ams_ground',
            output='screen',
            parameters=[
                LaunchConfiguration('ground_params_file'),
                {'drone_namespaces': [['/', namespace]], 'teacher.seed': seed,
                 'use_sim_time': use_sim_time},
            ],
        ),
    ])
