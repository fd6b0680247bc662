# Loaded only by scripts/build_msgs.sh (CMAKE_PROJECT_INCLUDE) when ams_msgs is built against
# the ROS 2 PyPI wheels. A real ROS build (colcon) never loads it.
#
# The wheels' exported *__rosidl_generator_py targets carry the include directories of the
# machine that built the wheels (/opt/python/...). Once the project's CMakeLists.txt has
# imported them, point them at this interpreter's Python and NumPy headers instead.
find_package(Python3 REQUIRED COMPONENTS Interpreter Development NumPy)

function(ams_fix_wheel_python_includes)
  get_directory_property(imported IMPORTED_TARGETS)
  foreach(target IN LISTS imported)
    if(target MATCHES "__rosidl_generator_py$")
      set_target_properties(${target} PROPERTIES INTERFACE_INCLUDE_DIRECTORIES
        "${Python3_INCLUDE_DIRS};${Python3_NumPy_INCLUDE_DIRS}")
    endif()
  endforeach()
endfunction()

cmake_language(DEFER CALL ams_fix_wheel_python_includes)
