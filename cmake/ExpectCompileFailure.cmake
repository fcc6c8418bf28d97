# cmake -DBUILD_DIR=... -DTARGET=... -DREGEX=... -P ExpectCompileFailure.cmake
# Passes only when building TARGET fails AND the diagnostic matches REGEX.
execute_process(COMMAND ${CMAKE_COMMAND} --build ${BUILD_DIR} --target ${TARGET}
  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(rc EQUAL 0)
  message(FATAL_ERROR "${TARGET} compiled, but it must not")
endif()
if(NOT "${out}${err}" MATCHES "${REGEX}")
  message(FATAL_ERROR "${TARGET} failed for another reason than /${REGEX}/:\n${out}${err}")
endif()
message(STATUS "${TARGET} failed to compile as expected (/${REGEX}/)")
