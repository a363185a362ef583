# Compiler flags, ccache and the optional CUDA language.
find_program(CCACHE_PROGRAM ccache)
if(CCACHE_PROGRAM)
  # Paths relative to the source tree and no working directory in the hash, so a fresh clone in another
  # folder (CI) reuses what an earlier build cached.
  set(ccache_launcher ${CMAKE_COMMAND} -E env CCACHE_BASEDIR=${CMAKE_SOURCE_DIR} CCACHE_NOHASHDIR=1
      ${CCACHE_PROGRAM})
  set(CMAKE_CXX_COMPILER_LAUNCHER ${ccache_launcher})
  set(CMAKE_C_COMPILER_LAUNCHER ${ccache_launcher})
  set(CMAKE_CUDA_COMPILER_LAUNCHER ${ccache_launcher})
endif()

add_compile_options(
  "$<$<COMPILE_LANGUAGE:CXX>:-Wall;-Wextra;-Wno-missing-field-initializers>")
if(CMAKE_BUILD_TYPE STREQUAL "RelWithDebInfo")
  # RelWithDebInfo defaults to -O2; the kernels want -O3 and keep asserts out of hot loops.
  string(REPLACE "-O2" "-O3" CMAKE_CXX_FLAGS_RELWITHDEBINFO "${CMAKE_CXX_FLAGS_RELWITHDEBINFO}")
endif()
if(AGENTSERVE_NATIVE)
  add_compile_options("$<$<COMPILE_LANGUAGE:CXX>:-march=native>")
endif()

set(AGENTSERVE_HAVE_CUDA OFF)
if(AGENTSERVE_CUDA)
  if(NOT CMAKE_CUDA_COMPILER)
    find_program(AGENTSERVE_NVCC nvcc HINTS /usr/local/cuda/bin)
    if(AGENTSERVE_NVCC)
      set(CMAKE_CUDA_COMPILER ${AGENTSERVE_NVCC})
    endif()
  endif()
  if(CMAKE_CUDA_COMPILER)
    set(CMAKE_CUDA_ARCHITECTURES 80 90)
    # CMake 3.25 does not know the flags for CUDA C++20 with nvcc 13; the .cu files stay C++17.
    set(CMAKE_CUDA_STANDARD 17)
    set(CMAKE_CUDA_STANDARD_REQUIRED ON)
    enable_language(CUDA)
    find_package(CUDAToolkit REQUIRED)
    set(AGENTSERVE_HAVE_CUDA ON)
    message(STATUS "agentserve: CUDA backend enabled (${CMAKE_CUDA_COMPILER}, sm_80 + sm_90)")
  else()
    message(STATUS "agentserve: nvcc not found; building the CPU backend only")
  endif()
endif()

# A layer library from the sources its folder holds. A layer whose folder has no .cpp yet is an interface
# library, so the tree configures while a layer is being started.
function(agentserve_layer_library name)
  if(ARGN)
    add_library(${name} STATIC ${ARGN})
    set(scope PUBLIC)
  else()
    add_library(${name} INTERFACE)
    set(scope INTERFACE)
  endif()
  target_include_directories(${name} ${scope} ${PROJECT_SOURCE_DIR})
  set_property(TARGET ${name} PROPERTY AGENTSERVE_SCOPE ${scope})
endfunction()
