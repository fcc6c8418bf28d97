# The guest must contain no SSE/AVX/MMX instruction (kvm-pvm emulates the guest;
# the guest enables no extended state). Fails on any xmm/ymm/zmm/mm/k register.
execute_process(COMMAND ${OBJDUMP} -d --no-show-raw-insn ${ELF} OUTPUT_VARIABLE dis RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "objdump failed on ${ELF}")
endif()
string(REGEX MATCHALL "[^\n]*%([xyz]mm[0-9]+|mm[0-7]|k[0-7])[^\n]*" simd "${dis}")
if(simd)
  list(JOIN simd "\n" lines)
  message(FATAL_ERROR "SIMD instructions in the guest:\n${lines}")
endif()
string(REGEX MATCHALL "\n[ ]+[0-9a-f]+:" insns "${dis}")
list(LENGTH insns n)
message(STATUS "guest: ${n} instructions, none SIMD")
